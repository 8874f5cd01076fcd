"""Pretrain the tiny vision tower on scene images (supervised multi-label), as LLaVA has CLIP.

    python scripts/pretrain_vision.py                       # -> runs/tower/tower (CLIPVisionModel dir + report)
    python scripts/pretrain_vision.py --steps 300 --out runs/tower_quick

Writes OUT/tower (``CLIPVisionModel.save_pretrained``; loads alone), its linear detection head
(probe_head.safetensors) and pretrain_report.json: per-class detection of large / small /
low-contrast objects and the false-positive rate on held-out scenes, at noise steps k = 0, 200, 500, 800.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from halluremedy.config import check_range, option, parse_config
from halluremedy.errors import run_main
from halluremedy.models.vision_pretrain import VisionPretrainSpec, pretrain_tower

D = VisionPretrainSpec()


@dataclass(frozen=True)
class PretrainRecipe:
    out: str = option("runs/tower", "output directory; the tower lands in OUT/tower")
    steps: int = option(D.steps, "optimiser steps")
    batch_size: int = option(D.batch_size, "images per step")
    lr: float = option(D.lr, "peak lr (cosine, 3% warmup)")
    scenes: int = option(D.scenes, "fresh scenes rendered in memory")
    hidden: int = option(D.hidden, "tower width")
    layers: int = option(D.layers, "tower depth")
    noise_share: float = option(D.noise_share, "share of images diffusion-noised (steps below --noise-max-step)")
    noise_max_step: int = option(D.noise_max_step, "noise steps drawn from [0, this)")
    heldout: int = option(2000, "held-out scenes for the detection report")
    seed: int = option(D.seed, "init and data order")
    threads: int = option(1, "torch threads")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "scenes", "hidden", "layers", "heldout", "threads", "noise_max_step"):
            check_range(self, name, ge=1)
        check_range(self, "noise_share", ge=0, le=1)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PretrainRecipe, __doc__, argv)
    torch.set_num_threads(cfg.threads)
    spec = VisionPretrainSpec(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, scenes=cfg.scenes,
                              hidden=cfg.hidden, layers=cfg.layers, noise_share=cfg.noise_share,
                              noise_max_step=cfg.noise_max_step, seed=cfg.seed)
    report = pretrain_tower(spec, cfg.out, heldout=cfg.heldout)
    for k, row in report["per_noise_step"].items():
        print(f"k={k}: accuracy {row['accuracy']:.3f}, large {row.get('large_mean', 0):.3f} "
              f"(min {row.get('large_min', 0):.3f}), small {row.get('small_mean', 0):.3f}, "
              f"low-contrast {row.get('low_contrast_mean', 0):.3f}, FP {row['fp_mean']:.3f}")
    print(f"tower: {cfg.out}/tower ({report['train_s']:.0f} s training)")


if __name__ == "__main__":
    run_main(main)
