"""Train the tiny scene-world base model (SFT on captions + yes/no existence QA), then evaluate it.

    halluremedy train-sft                          # data in runs/scenes, model in runs/base/model (~1.3 h on 2 cores)
    halluremedy train-sft --cycles 300:1e-3:4000 --out runs/quick
    halluremedy train-sft --resume                 # continue an interrupted run exactly
    halluremedy train-sft --init runs/base/model --cycles 2000:5e-4:40000 --out runs/more   # train further
    torchrun --nproc_per_node 2 scripts/train_sft.py --batch-size 16   # data parallel (FSDP2), per-process batch

The base is meant to hallucinate: its training captions carry partner noise (half of the captions
that could, i.e. whose image shows a trigger class without its partner, also mention the absent
partner), as human captions in COCO mention plausible absent objects.

OUT holds ``summary.md`` (the resolved config, the results, where everything is), ``config.yaml``,
``model/``, ``cycleN/`` (one per cycle: ``model/``, ``metrics.png``, ``metrics.jsonl``) and ``eval.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from halluremedy.config import check_model_dir, check_range, flat_config, option, section
from halluremedy.eval.run import EvalConfig, check_evaluation, evaluate_saved, format_table, summary_row
from halluremedy.pipeline import (
    BaseTrainSpec,
    SceneDataSpec,
    ensure_base_split,
    ensure_scene_data,
    parse_cycles,
    train_base_model,
)
from halluremedy.recipes.sections import DEFAULT_BASE_CYCLES, EvalSection, RunSection, check_cycles
from halluremedy.recipes.summary import write_summary
from halluremedy.train.distributed import init_data_parallel, main_rank_first


@dataclass(frozen=True)
class SFTRecipe:
    data: str = option("runs/scenes", "scene-world COCO root (generated if absent)")
    init: str = option("", "continue from this model directory instead of a fresh tiny model")
    cycles: tuple[str, ...] = option(DEFAULT_BASE_CYCLES,
                                     "cosine cycles STEPS:LR:SCENES[:NOISED]: each restarts (3% warmup, fresh AdamW) "
                                     "from the last one's model, on the first SCENES images of the base split (its "
                                     "first 4000 = the train split), a NOISED share of them diffusion-noised "
                                     "(default 0)")
    batch_size: int = option(BaseTrainSpec.batch_size, "conversations per step")
    seed: int = option(0, "seed for init, data order and evaluation sampling")
    caption_noise: float = option(SceneDataSpec.caption_noise, "share of eligible training captions that mention an "
                                  "absent partner (new data only)")
    eval: EvalSection = section(EvalSection())
    run: RunSection = section(RunSection(out="runs/base"))

    def __post_init__(self) -> None:
        """Every option checked before anything is generated or loaded (ConfigError names the flag)."""
        check_cycles(self, "cycles")
        check_range(self, "batch_size", ge=1)
        check_range(self, "caption_noise", ge=0, le=1)
        check_range(self, "seed", ge=0)

    @property
    def spec(self) -> BaseTrainSpec:
        return BaseTrainSpec(cycles=parse_cycles(",".join(self.cycles)), batch_size=self.batch_size, seed=self.seed)


def train_scene_base(cfg: SFTRecipe) -> Path:
    """Run the recipe; returns the model directory ``OUT/model``."""
    if cfg.init:
        check_model_dir(cfg.init, "--init")
    data = SceneDataSpec(caption_noise=cfg.caption_noise)
    shard, _ = init_data_parallel("cpu")
    with main_rank_first():  # rank 0 generates what is absent, the others read it
        _, heldout = ensure_scene_data(cfg.data, data)
        scenes = ensure_base_split(cfg.data, cfg.spec.scenes, data)
    heldout.verify_images(progress=shard.is_main)
    eval_cfg = EvalConfig.greedy_and_sampled(cfg.eval.eval_images, cfg.seed) if cfg.eval.eval_images else None
    if eval_cfg is not None:
        check_evaluation(heldout, eval_cfg, chair_option="--eval-images", pope_option="--eval-images")
    out = Path(cfg.run.out)
    model_dir = train_base_model(scenes, out, cfg.spec, init=cfg.init or None, resume=cfg.run.resume,
                                 allow_changes=cfg.run.resume_with_changes)  # the images: read (checked) before step 1
    if not shard.is_main:  # under torchrun, rank 0 alone evaluates
        return model_dir
    table = f"model: {model_dir} (--eval-images 0: not evaluated)"
    if eval_cfg is not None:
        result = evaluate_saved(model_dir, heldout, eval_cfg, out / "eval.json", recipe=flat_config(cfg))
        table = format_table({"base": summary_row(result)}, result["chair_signature"])
        print(table)
        print(json.dumps({k: result["chair"][k]["examples"][:2] for k in result["chair"]}, indent=1))
    else:
        print(table)
    cycles = [out / f"cycle{i}" for i in range(len(cfg.cycles))] if len(cfg.cycles) > 1 else [out]
    files = {"model": model_dir, "evaluation, every caption and answer": out / "eval.json"}
    for i, cycle in enumerate(cycles):
        files |= {f"cycle {i} training curves": cycle / "metrics.png",
                  f"cycle {i} metrics per step": cycle / "metrics.jsonl",
                  f"cycle {i} checkpoint (for --resume)": cycle / "checkpoint"}
    print(f"summary: {write_summary(out, 'train-sft', cfg, results=table, files=files)}")
    return model_dir
