"""``halluremedy`` command line.

``halluremedy eval --model DIR --data DIR [--split SPLIT]``: CHAIR and POPE of a model.
``halluremedy chair --captions FILE.jsonl [--annotations COCO_ROOT --split val2014] --out OUT.json``:
CHAIR of captions made anywhere (see :mod:`halluremedy.eval.score_captions`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from halluremedy.config import DEBUG_HELP, check, check_device, check_model_dir, check_range
from halluremedy.data.coco import CocoDataset, DatasetError, write_json_atomic
from halluremedy.errors import ConfigError, run_main
from halluremedy.eval.chair import COMPAT_MODES
from halluremedy.eval.chair_reference import REFERENCE_REVISIONS
from halluremedy.eval.run import POPE_SETTINGS, EvalConfig, check_evaluation, evaluate, format_table, summary_row
from halluremedy.eval.score_captions import score_captions
from halluremedy.models.generate import Decoding
from halluremedy.models.llava import load_model

EVAL_ROOT = Path("runs") / "eval"  # where `halluremedy eval` writes without --out
DEFAULT_CHAIR_IMAGES = 500


def default_eval_out(model: Path, split: str) -> Path:
    """``runs/eval/<model dir name>_<split>.json``; a directory named ``model`` (as recipes save them,
    ``OUT/model``) is named by its parent too: ``runs/eval/stage2_model_val.json``."""
    model = model.resolve()
    name = f"{model.parent.name}_{model.name}" if model.name == "model" else model.name
    return EVAL_ROOT / f"{name}_{split}.json"


def eval_main(args: argparse.Namespace) -> int:
    # every option and input checked before the model loads; nothing is written until the end
    check_range(args, "pope_images", ge=0)
    if args.chair_images is not None:
        check_range(args, "chair_images", ge=1)
    for name in ("max_new_tokens", "batch_size"):
        check_range(args, name, ge=1)
    check_range(args, "seed", ge=0)
    for t in args.temperature:
        check(t >= 0 and math.isfinite(t), "temperature", "every temperature must be >= 0 (0 is greedy) and finite", t)
    check_device(args)
    model_dir = check_model_dir(args.model)
    out = Path(args.out) if args.out else default_eval_out(model_dir, args.split)
    if out.resolve().is_relative_to(model_dir.resolve()):
        raise ConfigError(f"option '--out': {out} is inside the model directory {model_dir}; results never go into a "
                          f"model directory (default: {default_eval_out(model_dir, args.split)})")
    dataset = CocoDataset.load(args.data, args.split)
    decodings = [Decoding(0.0, args.max_new_tokens, args.seed)]
    decodings += [Decoding(t, args.max_new_tokens, args.seed) for t in args.temperature]
    chair_images = min(DEFAULT_CHAIR_IMAGES, len(dataset)) if args.chair_images is None else args.chair_images
    cfg = EvalConfig(chair_images=chair_images, pope_images=args.pope_images, seed=args.seed,
                     caption_prompt=args.prompt, caption_decodings=decodings, batch_size=args.batch_size,
                     pope_settings=POPE_SETTINGS if args.pope_images else (), chair_compat=args.chair_compat)
    check_evaluation(dataset, cfg)
    dataset.verify_images(progress=True)
    model, processor = load_model(model_dir, device=args.device)
    result = evaluate(model, processor, dataset, cfg)
    write_json_atomic(out, result, indent=2)
    print(format_table({model_dir.name: summary_row(result)}, result["chair_signature"]))
    print(f"wrote {out}")
    return 0


def chair_main(args: argparse.Namespace) -> int:
    result = score_captions(args.captions, annotations=args.annotations, split=args.split, compat=args.compat,
                            reference_revision=args.reference_revision)
    write_json_atomic(args.out, result, indent=2)
    row = {"CHAIR_s": result["chair_s"], "CHAIR_i": result["chair_i"], "recall": result["recall"],
           "len": result["mean_length"]}
    print(format_table({Path(args.captions).name: row}, result["signature"]))
    print(f"{result['n_captions']} captions, {result['n_mentions']} object mentions, "
          f"{result['n_hallucinated_mentions']} hallucinated; wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``halluremedy`` command: an input error is one line, ``halluremedy: error: ...``, exit 2
    (:func:`~halluremedy.errors.run_main`; ``--debug`` for the traceback)."""
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="halluremedy", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="CHAIR (captions) and POPE (random/popular/adversarial) on a COCO-format split")
    ev.add_argument("--model", required=True, help="LLaVA checkpoint directory (tiny or llava-1.5-*-hf)")
    ev.add_argument("--data", required=True, help="COCO-format root (annotations/ and SPLIT/ inside)")
    ev.add_argument("--split", default="val", help="split name: annotations/instances_SPLIT.json (default: val)")
    ev.add_argument("--chair-images", type=int, default=None,
                    help=f"images captioned for CHAIR (default: {DEFAULT_CHAIR_IMAGES}, or the whole split if smaller; "
                         f"more than the split has is refused)")
    ev.add_argument("--pope-images", type=int, default=500,
                    help="at most this many of the split's images with >= 3 classes for POPE (the JSON's "
                         "images.pope says how many were used); 0: skip POPE")
    ev.add_argument("--temperature", type=float, nargs="*", default=[1.0],
                    help="also caption by sampling at these temperatures (POVID used 0.2; none given: greedy "
                         "only); greedy always runs")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--prompt", default=EvalConfig.caption_prompt, help="captioning prompt")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", help="JSON output path, never inside the model directory (default: "
                                  "runs/eval/MODELNAME_SPLIT.json)")
    ev.add_argument("--chair-compat", choices=COMPAT_MODES, default="halluremedy",
                    help="CHAIR parser: halluremedy (default) or reference (the original code's; real COCO only)")
    ev.set_defaults(func=eval_main)
    ch = sub.add_parser("chair", help="CHAIR of captions made anywhere (JSONL of image_id + caption)")
    ch.add_argument("--captions", required=True,
                    help='JSONL, one {"image_id", "caption"} a line, with "ground_truth" (COCO class names) unless '
                         "--annotations is given")
    ch.add_argument("--annotations", help="COCO root (annotations/instances_SPLIT.json, captions_SPLIT.json): ground "
                                          "truth = annotated classes + objects parsed from the reference captions")
    ch.add_argument("--split", default="val2014", help="split of --annotations (default: val2014)")
    ch.add_argument("--compat", choices=COMPAT_MODES, default="reference",
                    help="reference (default): the original CHAIR code's parse, comparable with published tables; "
                         "halluremedy: this package's")
    ch.add_argument("--reference-revision", choices=tuple(REFERENCE_REVISIONS),
                    help="which published revision of the original code (default: 585f2d9; e36ff5e also drops "
                         "'train track')")
    ch.add_argument("--out", required=True, help="JSON output path")
    ch.set_defaults(func=chair_main)
    args = parser.parse_args(argv)
    if args.command == "chair":
        if args.reference_revision and args.compat != "reference":
            parser.error("--reference-revision applies to --compat reference only")
        try:
            return args.func(args)
        except DatasetError as e:
            print(f"halluremedy: error: {e}", file=sys.stderr)
            return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
