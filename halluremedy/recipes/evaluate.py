"""CHAIR and POPE of a saved model (``halluremedy eval``), and CHAIR of captions made anywhere
(``halluremedy chair``), e.g.

    halluremedy eval --model runs/povid/stage2/model --data runs/scenes --split val
    halluremedy eval --model /ckpt/llava-1.5-7b-hf --data /data/coco --split val2014 --device cuda --temperature 0.2
    halluremedy chair --captions captions.jsonl --annotations /data/coco --split val2014 --out chair.json
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from halluremedy.config import check, check_choices, check_device, check_model_dir, check_range, option, required
from halluremedy.data.coco import CocoDataset, write_json_atomic
from halluremedy.errors import ConfigError
from halluremedy.eval.chair_reference import REFERENCE_REVISIONS
from halluremedy.eval.run import POPE_SETTINGS, EvalConfig, check_evaluation, evaluate, format_table, summary_row
from halluremedy.eval.score_captions import score_captions
from halluremedy.models.generate import Decoding
from halluremedy.models.llava import load_model

EVAL_ROOT = Path("runs") / "eval"  # where `halluremedy eval` writes without --out
DEFAULT_CHAIR_IMAGES = 500
ChairCompat = Literal["halluremedy", "reference"]
ReferenceRevision = Literal[tuple(REFERENCE_REVISIONS)]


def default_eval_out(model: Path, split: str) -> Path:
    """``runs/eval/<model dir name>_<split>.json``; a directory named ``model`` (as recipes save them,
    ``OUT/model``) is named by its parent too: ``runs/eval/stage2_model_val.json``."""
    model = model.resolve()
    name = f"{model.parent.name}_{model.name}" if model.name == "model" else model.name
    return EVAL_ROOT / f"{name}_{split}.json"


@dataclass(frozen=True)
class EvaluateConfig:
    model: str = required("LLaVA checkpoint directory (tiny or llava-1.5-*-hf)")
    data: str = required("COCO-format root (annotations/ and SPLIT/ inside)")
    split: str = option("val", "split name: annotations/instances_SPLIT.json")
    chair_images: int | None = option(None, f"images captioned for CHAIR; none: {DEFAULT_CHAIR_IMAGES}, or the "
                                      f"whole split if smaller (more than the split has is refused)")
    pope_images: int = option(500, "at most this many of the split's images with >= 3 classes for POPE (the JSON's "
                              "images.pope says how many were used); 0: skip POPE")
    temperature: tuple[float, ...] = option((1.0,), "also caption by sampling at these temperatures (POVID used "
                                            "0.2; none given: greedy only); greedy always runs")
    max_new_tokens: int = option(64, "longest caption, in tokens")
    prompt: str = option(EvalConfig.caption_prompt, "captioning prompt")
    seed: int = option(0, "seed of the sampled captions and of the image draw")
    batch_size: int = option(64, "prompts per generation batch")
    device: str = option("cpu", "cpu | cuda | cuda:N")
    out: str = option("", "JSON output path, never inside the model directory; empty: "
                          "runs/eval/MODELNAME_SPLIT.json")
    chair_compat: ChairCompat = option("halluremedy", "CHAIR parser: halluremedy, or reference (the original "
                                       "code's; real COCO only)")

    def __post_init__(self) -> None:
        """Every option checked before the model loads."""
        check_choices(self)
        check_range(self, "pope_images", ge=0)
        if self.chair_images is not None:
            check_range(self, "chair_images", ge=1)
        for name in ("max_new_tokens", "batch_size"):
            check_range(self, name, ge=1)
        check_range(self, "seed", ge=0)
        for t in self.temperature:
            check(t >= 0 and math.isfinite(t), "temperature", "every temperature must be >= 0 (0 is greedy) and finite",
                  t)
        check_device(self)

    def eval_config(self, dataset: CocoDataset) -> EvalConfig:
        decodings = [Decoding(t, self.max_new_tokens, self.seed) for t in (0.0, *self.temperature)]
        chair_images = min(DEFAULT_CHAIR_IMAGES, len(dataset)) if self.chair_images is None else self.chair_images
        return EvalConfig(chair_images=chair_images, pope_images=self.pope_images, seed=self.seed,
                          caption_prompt=self.prompt, caption_decodings=decodings, batch_size=self.batch_size,
                          pope_settings=POPE_SETTINGS if self.pope_images else (), chair_compat=self.chair_compat)


def evaluate_model(cfg: EvaluateConfig) -> dict:
    """Evaluate, write the JSON, print the table; returns the result. Nothing is written until the end."""
    model_dir = check_model_dir(cfg.model)
    out = Path(cfg.out) if cfg.out else default_eval_out(model_dir, cfg.split)
    if out.resolve().is_relative_to(model_dir.resolve()):
        raise ConfigError(f"option '--out': {out} is inside the model directory {model_dir}; results never go into a "
                          f"model directory (default: {default_eval_out(model_dir, cfg.split)})")
    dataset = CocoDataset.load(cfg.data, cfg.split)
    eval_cfg = cfg.eval_config(dataset)
    check_evaluation(dataset, eval_cfg)
    dataset.verify_images(progress=True)
    model, processor = load_model(model_dir, device=cfg.device)
    result = evaluate(model, processor, dataset, eval_cfg)
    write_json_atomic(out, result, indent=2)
    print(format_table({model_dir.name: summary_row(result)}, result["chair_signature"]))
    print(f"wrote {out}")
    return result


@dataclass(frozen=True)
class ChairConfig:
    captions: str = required('JSONL, one {"image_id", "caption"} a line, with "ground_truth" (COCO class names) '
                             "unless --annotations is given")
    out: str = required("JSON output path")
    annotations: str = option("", "COCO root (annotations/instances_SPLIT.json, captions_SPLIT.json): ground truth = "
                              "annotated classes + objects parsed from the reference captions")
    split: str = option("val2014", "split of --annotations")
    compat: ChairCompat = option("reference", "reference: the original CHAIR code's parse, comparable with "
                                 "published tables; halluremedy: this package's")
    reference_revision: ReferenceRevision | None = option(None, "which published revision of the original code "
                                                          "(none: 585f2d9; e36ff5e also drops 'train track')")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.reference_revision and self.compat != "reference":
            raise ConfigError("--reference-revision applies to --compat reference only")


def score_caption_file(cfg: ChairConfig) -> dict:
    """CHAIR of ``cfg.captions``, written to ``cfg.out`` and printed as a table; returns the result."""
    result = score_captions(cfg.captions, annotations=cfg.annotations or None, split=cfg.split, compat=cfg.compat,
                            reference_revision=cfg.reference_revision)
    write_json_atomic(cfg.out, result, indent=2)
    row = {"CHAIR_s": result["chair_s"], "CHAIR_i": result["chair_i"], "recall": result["recall"],
           "len": result["mean_length"]}
    print(format_table({Path(cfg.captions).name: row}, result["signature"]))
    print(f"{result['n_captions']} captions, {result['n_mentions']} object mentions, "
          f"{result['n_hallucinated_mentions']} hallucinated; wrote {cfg.out}")
    return result
