"""``halluremedy`` command line.

``halluremedy eval --model DIR --data DIR [--split SPLIT]``: CHAIR and POPE of a model.
``halluremedy chair --captions FILE.jsonl [--annotations COCO_ROOT --split val2014] --out OUT.json``:
CHAIR of captions made anywhere (see :mod:`halluremedy.eval.score_captions`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from halluremedy.data.coco import CocoDataset, DatasetError, write_json_atomic
from halluremedy.eval.chair import COMPAT_MODES
from halluremedy.eval.chair_reference import REFERENCE_REVISIONS
from halluremedy.eval.run import POPE_SETTINGS, EvalConfig, evaluate, format_table, summary_row
from halluremedy.eval.score_captions import score_captions
from halluremedy.models.generate import Decoding
from halluremedy.models.llava import load_model


def eval_main(args: argparse.Namespace) -> int:
    model, processor = load_model(args.model, device=args.device)
    dataset = CocoDataset.load(args.data, args.split)
    decodings = [Decoding(0.0, args.max_new_tokens, args.seed)]
    decodings += [Decoding(t, args.max_new_tokens, args.seed) for t in args.temperature]
    cfg = EvalConfig(chair_images=args.chair_images, pope_images=args.pope_images, seed=args.seed,
                     caption_prompt=args.prompt, caption_decodings=decodings, batch_size=args.batch_size,
                     pope_settings=POPE_SETTINGS if args.pope_images else (), chair_compat=args.chair_compat)
    result = evaluate(model, processor, dataset, cfg)
    out = Path(args.out) if args.out else Path(args.model) / f"eval_{args.split}.json"
    write_json_atomic(out, result, indent=2)
    print(format_table({Path(args.model).name: summary_row(result)}, result["chair_signature"]))
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
    parser = argparse.ArgumentParser(prog="halluremedy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="CHAIR (captions) and POPE (random/popular/adversarial) on a COCO-format split")
    ev.add_argument("--model", required=True, help="LLaVA checkpoint directory (tiny or llava-1.5-*-hf)")
    ev.add_argument("--data", required=True, help="COCO-format root (annotations/ and SPLIT/ inside)")
    ev.add_argument("--split", default="val", help="split name: annotations/instances_SPLIT.json (default: val)")
    ev.add_argument("--chair-images", type=int, default=500)
    ev.add_argument("--pope-images", type=int, default=500, help="0: skip POPE")
    ev.add_argument("--temperature", type=float, nargs="*", default=[1.0],
                    help="also caption by sampling at these temperatures (POVID used 0.2; none given: greedy "
                         "only); greedy always runs")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--prompt", default=EvalConfig.caption_prompt, help="captioning prompt")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", help="JSON output path (default: MODEL/eval_SPLIT.json)")
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
