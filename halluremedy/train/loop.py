"""The one optimisation loop every recipe (SFT, reflective SFT, DPO) runs.

A recipe supplies ``micro_step(step, micro) -> (loss, metrics)``: the forward of one micro-batch
(``metrics["batch"]`` names it in errors and is not logged),
chosen deterministically from ``(step, micro)`` so a resumed run sees exactly the batches an
uninterrupted one would. The loop does the rest: AdamW, cosine schedule with warmup, gradient
accumulation, clipping, bf16 autocast on CUDA, NaN guard, metrics JSONL, atomic checkpoints and
exact resume.

Checkpoint layout (``OUT/checkpoint/``, replaced atomically)::

    trainable.safetensors   every parameter with requires_grad (LoRA adapters, or the full model)
    optimizer.pt            optimizer + scheduler state, step, RNG states
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

MicroStep = Callable[[int, int], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    lr: float
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    bf16: bool = True  # autocast to bf16 where the device is CUDA; ignored on CPU


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer, scheduler, step: int) -> None:
    """Write ``out_dir/checkpoint`` through a temporary directory and a rename."""
    final = out_dir / "checkpoint"
    tmp = out_dir / ".checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step, "rng": rng},
               tmp / "optimizer.pt")
    old = out_dir / ".checkpoint.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def load_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer, scheduler) -> int:
    """Restore trainable weights, optimizer, scheduler and RNG; return the number of steps done."""
    ckpt = out_dir / "checkpoint"
    weights = load_file(ckpt / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise RuntimeError(f"{ckpt}: checkpoint lacks trainable parameters {missing[:3]}... (different model or LoRA setup?)")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)
    state = torch.load(ckpt / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


def train_loop(model: torch.nn.Module, micro_step: MicroStep, cfg: LoopConfig, out_dir: str | os.PathLike, *,
               resume: bool = False, desc: str = "train") -> list[dict]:
    """Run ``cfg.steps`` optimiser steps; returns the logged metric rows (also in ``metrics.jsonl``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps)
    metrics_path = out_dir / "metrics.jsonl"
    start = 0
    if resume and (out_dir / "checkpoint").exists():
        start = load_checkpoint(out_dir, model, optimizer, scheduler)
        _truncate_metrics(metrics_path, start)
    elif metrics_path.exists():
        metrics_path.unlink()
    (out_dir / "loop_config.json").write_text(json.dumps(asdict(cfg), indent=2))

    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    rows: list[dict] = []
    model.train()
    bar = tqdm(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps, leave=False)
    for step in bar:
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            with autocast:
                loss, metrics = micro_step(step, micro)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {step} micro-batch {micro} "
                                         f"({metrics.get('batch', '?')}); last good checkpoint kept in {out_dir}")
            (loss / cfg.grad_accum).backward()
            for k, v in metrics.items():
                if k != "batch" and isinstance(v, (int, float)):
                    sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm), **sums}
            rows.append(row)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=f"{sums.get('loss', float('nan')):.4f}")
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
            save_checkpoint(out_dir, model, optimizer, scheduler, step + 1)
    return rows


def _truncate_metrics(path: Path, done_steps: int) -> None:
    """Drop metric rows logged after the checkpoint (a run killed between save and log)."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= done_steps))


def read_metrics(out_dir: str | os.PathLike) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(out_dir: str | os.PathLike, keys: list[str], png_name: str = "metrics.png") -> Path:
    """One PNG with a panel per metric key over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(out_dir)
    keys = [k for k in keys if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    path = Path(out_dir) / png_name
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
