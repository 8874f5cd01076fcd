"""``halluremedy`` command line: ``halluremedy eval --model DIR --data DIR [--split SPLIT]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from halluremedy.data.coco import CocoDataset, write_json_atomic
from halluremedy.eval.run import POPE_SETTINGS, EvalConfig, evaluate, format_table, summary_row
from halluremedy.models.generate import Decoding
from halluremedy.models.llava import load_model


def eval_main(args: argparse.Namespace) -> int:
    model, processor = load_model(args.model, device=args.device)
    dataset = CocoDataset.load(args.data, args.split)
    decodings = [Decoding(0.0, args.max_new_tokens, args.seed)]
    decodings += [Decoding(t, args.max_new_tokens, args.seed) for t in args.temperature]
    cfg = EvalConfig(chair_images=args.chair_images, pope_images=args.pope_images, seed=args.seed,
                     caption_prompt=args.prompt, caption_decodings=decodings, batch_size=args.batch_size,
                     pope_settings=POPE_SETTINGS if args.pope_images else ())
    result = evaluate(model, processor, dataset, cfg)
    out = Path(args.out) if args.out else Path(args.model) / f"eval_{args.split}.json"
    write_json_atomic(out, result, indent=2)
    print(format_table({Path(args.model).name: summary_row(result)}))
    print(f"wrote {out}")
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
    ev.set_defaults(func=eval_main)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
