"""Train the tiny scene-world base model (SFT on captions + yes/no existence QA), then evaluate it.

    python scripts/train_sft.py                          # data in runs/scenes, model in runs/base/model (~1.3 h on 2 cores)
    python scripts/train_sft.py --cycles 300:1e-3:4000 --out runs/quick
    python scripts/train_sft.py --resume                 # continue an interrupted run exactly
    python scripts/train_sft.py --init runs/base/model --cycles 2000:5e-4:40000 --out runs/more   # train further
    torchrun --nproc_per_node 2 scripts/train_sft.py --batch-size 16   # data parallel (FSDP2), per-process batch

The base is meant to hallucinate: its training captions carry partner noise (half of the captions
that could, i.e. whose image shows a trigger class without its partner, also mention the absent
partner), as human captions in COCO mention plausible absent objects.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from halluremedy.config import check, check_model_dir, check_range, option, parse_config
from halluremedy.errors import ConfigError, run_main
from halluremedy.eval.run import EvalConfig, check_evaluation, evaluate_saved, format_table, summary_row
from halluremedy.pipeline import (
    BaseTrainSpec,
    SceneDataSpec,
    ensure_base_split,
    ensure_scene_data,
    format_cycles,
    parse_cycles,
    train_base_model,
)
from halluremedy.train.distributed import init_data_parallel, main_rank_first


@dataclass(frozen=True)
class SFTRecipe:
    data: str = option("runs/scenes", "scene-world COCO root (generated if absent)")
    out: str = option("runs/base", "output directory; the model lands in OUT/model")
    cycles: str = option(format_cycles(BaseTrainSpec.cycles),
                         "cosine cycles STEPS:LR:SCENES[:NOISED],...: each restarts (3% warmup, fresh AdamW) from the "
                         "last one's model, on the first SCENES images of the base split (its first 4000 = the train "
                         "split), a NOISED share of them diffusion-noised (default 0)")
    batch_size: int = option(BaseTrainSpec.batch_size, "conversations per step")
    seed: int = option(0, "seed for init, data order and evaluation sampling")
    caption_noise: float = option(SceneDataSpec.caption_noise, "share of eligible training captions that mention an absent partner (new data only)")
    eval_images: int = option(500, "held-out images for CHAIR and POPE")
    init: str = option("", "continue from this model directory instead of a fresh tiny model")
    resume: bool = option(False, "continue from OUT/checkpoint (same settings only)")
    resume_with_changes: bool = option(False, "with --resume: also continue a run made with other settings")

    def __post_init__(self) -> None:
        """Every option checked before anything is generated or loaded (ConfigError names the flag)."""
        try:
            parse_cycles(self.cycles)
        except ValueError as e:
            raise ConfigError(f"option '--cycles': {e}") from None
        check_range(self, "batch_size", ge=1)
        check_range(self, "caption_noise", ge=0, le=1)
        for name in ("seed", "eval_images"):
            check_range(self, name, ge=0)
        check(self.resume or not self.resume_with_changes, "resume_with_changes", "goes with --resume",
              self.resume_with_changes)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(SFTRecipe, __doc__, argv)
    if cfg.init:
        check_model_dir(cfg.init, "--init")
    data = SceneDataSpec(caption_noise=cfg.caption_noise)
    shard, _ = init_data_parallel("cpu")
    with main_rank_first():  # rank 0 generates what is absent, the others read it
        _, heldout = ensure_scene_data(cfg.data, data)
        scenes = ensure_base_split(cfg.data, BaseTrainSpec(cycles=parse_cycles(cfg.cycles)).scenes, data)
    heldout.verify_images(progress=shard.is_main)
    eval_cfg = EvalConfig.greedy_and_sampled(cfg.eval_images, cfg.seed) \
        if cfg.eval_images else None
    if eval_cfg is not None:
        check_evaluation(heldout, eval_cfg, chair_option="--eval-images", pope_option="--eval-images")
    spec = BaseTrainSpec(cycles=parse_cycles(cfg.cycles), batch_size=cfg.batch_size, seed=cfg.seed)
    model_dir = train_base_model(scenes, cfg.out, spec, init=cfg.init or None, resume=cfg.resume,
                                 allow_changes=cfg.resume_with_changes)  # the images: read (checked) before step 1
    if not shard.is_main:  # under torchrun, rank 0 alone evaluates
        return
    if eval_cfg is None:
        print(f"model: {model_dir} (--eval-images 0: not evaluated)")
        return
    result = evaluate_saved(model_dir, heldout, eval_cfg, Path(cfg.out) / "eval.json", recipe=asdict(cfg))
    print(format_table({"base": summary_row(result)}, result["chair_signature"]))
    print(json.dumps({k: result["chair"][k]["examples"][:2] for k in result["chair"]}, indent=1))


if __name__ == "__main__":
    run_main(main)
