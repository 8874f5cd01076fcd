"""The LLaVA-like scene base (``python scripts/train_llava_base.py``, ``halluremedy train-llava-base``): pretrained
frozen tower, then text / alignment / instruction stages; then evaluated.

    python scripts/train_llava_base.py                      # the shipped scene_base_llava (~15 min on this 2-core machine)
    python scripts/train_llava_base.py --tower runs/tower/tower --out runs/llava_b   # reuse a pretrained tower
    python scripts/train_llava_base.py --partner-noise 0.3 --extra-noise 0.4 --out runs/llava_n

Stages (halluremedy.train.llava_recipe): tower pretraining (scripts/pretrain_vision.py's defaults),
the LM alone on the captions as text, projector alignment on short clean captions (tower and LM
frozen), instruction tuning on detailed captions that carry the prior + short captions + yes/no QA
(tower frozen). Evaluated on the held-out scenes (DATA/val) with CHAIR greedy and sampled, the
hallucination-source breakdown, and POPE.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from halluremedy.config import check_choices, check_range, option
from halluremedy.data.coco import CocoDataset
from halluremedy.data.scenes.world import DETAILED_ORDERS
from halluremedy.errors import ConfigError
from halluremedy.eval.run import EvalConfig, check_evaluation, evaluate_saved, format_table, summary_row
from halluremedy.pipeline import SceneDataSpec, ensure_scene_data, scene_model_texts
from halluremedy.train.llava_recipe import LlavaRecipeSpec, Stage, train_llava_base

D = LlavaRecipeSpec()


def _stage(text: str, option_name: str) -> Stage:
    try:
        steps, lr = text.split(":")
        return Stage(int(steps), float(lr))
    except ValueError:
        raise ConfigError(f"option '{option_name}': expected STEPS:LR, got {text!r}") from None


def _rates(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated rates, got {text!r}") from None


@dataclass(frozen=True)
class LlavaBaseRecipe:
    out: str = option("runs/llava_base", "output directory; the model lands in OUT/model")
    tower: str = option("", "a pretrained tower directory (CLIPVisionModel) to use instead of pretraining one")
    tower_steps: int = option(D.tower.steps, "tower pretraining steps")
    text: str = option(f"{D.text.steps}:{D.text.lr:g}", "LM-on-text stage STEPS:LR (0 steps skips it)")
    align: str = option(f"{D.align.steps}:{D.align.lr:g}", "projector alignment stage STEPS:LR")
    instruct: str = option(f"{D.instruct.steps}:{D.instruct.lr:g}", "instruction tuning stage STEPS:LR")
    scenes: int = option(D.scenes, "training scenes (stream seed 1, rendered in memory)")
    partner_noise: float = option(D.partner_noise, "share of eligible detailed captions naming an absent partner")
    extra_noise: str = option(",".join(f"{x:g}" for x in D.extra_noise),
                              "share of detailed captions ending with an absent object, per object count: "
                              "R1,R2,...: scenes of k objects use Rk (the last for more)")
    batch_size: int = option(D.batch_size, "conversations per step")
    questions_per_image: int = option(D.questions_per_image, "yes/no existence questions per image in instruction tuning")
    qa_turns: int = option(D.qa_turns, "existence questions per conversation (multi-turn)")
    qa_weight: float = option(D.qa_weight, "loss weight of the QA answer tokens in instruction tuning (captions: 1)")
    qa_partner_noise: float = option(D.qa_partner_noise,
                                     "share of existence questions about an absent partner of a present object answered Yes")
    qa_partner_share: float = option(D.qa_partner_share, "share of absent-class questions that ask about an absent "
                                     "partner of a present object, where the scene has one")
    qa_trigger_noise: float = option(D.qa_trigger_noise,
                                     "share of existence questions about an absent trigger of a present partner answered Yes")
    feature_strategy: str = option(D.feature_strategy, "'default' (class token dropped, llava-1.5) or 'full' (kept)")
    cls_head: bool = option(D.tower.cls_head, "pretrain the tower's class token too (with --feature-strategy full)")
    detailed_order: Literal[DETAILED_ORDERS] = option(D.detailed_order, "order detailed captions name objects in "
                                                      "(reading: left to right)")
    text_hidden: int = option(D.text_hidden, "the LM's width (its MLP is twice as wide; heads of 32)")
    text_layers: int = option(D.text_layers, "the LM's decoder layers")
    seed: int = option(D.seed, "init and data order")
    data: str = option("runs/scenes", "scene root whose EVAL_SPLIT is evaluated on (the default world's; made if absent)")
    eval_split: str = option("val", "held-out split")
    eval_images: int = option(1000, "held-out images for CHAIR and POPE (0: no evaluation)")
    threads: int = option(1, "torch threads")

    def __post_init__(self) -> None:
        for name, value in (("--text", self.text), ("--align", self.align), ("--instruct", self.instruct)):
            _stage(value, name)
        check_range(self, "partner_noise", ge=0, le=1)
        check_range(self, "qa_partner_noise", ge=0, le=1)
        check_range(self, "qa_partner_share", ge=0, le=1)
        check_range(self, "qa_trigger_noise", ge=0, le=1)
        check_range(self, "qa_weight", gt=0)
        try:
            LlavaRecipeSpec(extra_noise=_rates(self.extra_noise))
        except ValueError as e:
                raise ConfigError(f"option '--extra-noise': {e}") from None
        check_choices(self)
        if self.text_hidden % 32:
            raise ConfigError(f"option '--text-hidden': must be a multiple of 32 (heads of 32), got {self.text_hidden}")
        for name in ("scenes", "batch_size", "threads", "tower_steps", "qa_turns", "text_layers"):
            check_range(self, name, ge=1)
        check_range(self, "eval_images", ge=0)

    def spec(self) -> LlavaRecipeSpec:
        """The recipe these options define (the LM: heads of 32, an MLP twice its width)."""
        return LlavaRecipeSpec(tower=replace(D.tower, steps=self.tower_steps, cls_head=self.cls_head),
                               feature_strategy=self.feature_strategy, text=_stage(self.text, "--text"),
                               align=_stage(self.align, "--align"), instruct=_stage(self.instruct, "--instruct"),
                               scenes=self.scenes, partner_noise=self.partner_noise, extra_noise=_rates(self.extra_noise),
                               batch_size=self.batch_size, questions_per_image=self.questions_per_image, qa_turns=self.qa_turns,
                               qa_weight=self.qa_weight, qa_partner_noise=self.qa_partner_noise, seed=self.seed,
                               qa_partner_share=self.qa_partner_share, qa_trigger_noise=self.qa_trigger_noise,
                               detailed_order=self.detailed_order,
                               text_hidden=self.text_hidden, text_layers=self.text_layers, text_heads=self.text_hidden // 32,
                               text_intermediate=2 * self.text_hidden)


def build_llava_base(cfg: LlavaBaseRecipe) -> Path:
    """Run the recipe of ``cfg`` into ``OUT`` (``OUT/model``, ``OUT/tower``, ``OUT/eval.json``); returns ``OUT/model``."""
    torch.set_num_threads(cfg.threads)
    print("recipe:", json.dumps(asdict(cfg)), flush=True)  # a log names the run it records
    spec = cfg.spec()
    heldout = None
    if cfg.eval_images:
        if not (Path(cfg.data) / "annotations" / f"instances_{cfg.eval_split}.json").exists():
            ensure_scene_data(cfg.data, SceneDataSpec(detailed_order=spec.detailed_order))
        heldout = CocoDataset.load(cfg.data, cfg.eval_split)
        eval_cfg = EvalConfig.greedy_and_sampled(cfg.eval_images, cfg.seed)
        check_evaluation(heldout, eval_cfg, chair_option="--eval-images", pope_option="--eval-images")
    model_dir = train_llava_base(spec, cfg.out, texts=scene_model_texts(), tower_dir=cfg.tower or None)
    if heldout is None:
        print(f"model: {model_dir} (--eval-images 0: not evaluated)")
        return model_dir
    result = evaluate_saved(model_dir, heldout, eval_cfg, Path(cfg.out) / "eval.json", recipe=asdict(cfg))
    print(format_table({"llava_base": summary_row(result)}, result["chair_signature"]))
    for dec, s in result["chair"].items():
        print(dec, json.dumps({k: v for k, v in s["sources"].items()}))
    print(json.dumps({k: result["chair"][k]["examples"][:3] for k in result["chair"]}, indent=1))
    return model_dir
