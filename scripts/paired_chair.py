"""Is a CHAIR_s difference outside the noise? Same-seed differences of two models' captions on one image set,
with a bootstrap interval over seeds and images together.

Evaluate each model on the same images (``halluremedy eval`` writes the per-caption results this reads),
then pass the runs of model A and of model B in the same seed order; a single B file is compared with
every A run (a base model has no seed)::

    for s in 0 1 2 3 4; do
      halluremedy eval --model runs/povid/seed$s/stage2/model --data runs/scenes_test --split test \\
          --chair-images 10000 --pope-images 0 --temperature --out runs/chair10k/stage2_$s.json
    done
    python scripts/paired_chair.py --a runs/chair10k/stage2_{0..4}.json --b runs/chair10k/base.json

Why: with 1000 held-out images the image sample alone moves a paired CHAIR_s difference by about
±0.01 (one standard error), which is the size of the effects being compared, and every seed shares
that sample, so the spread over seeds does not show it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from halluremedy.data.coco import write_json_atomic
from halluremedy.eval.seeds import caption_flags, paired_chair_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", nargs="+", required=True, help="evaluation JSONs of model A, one per seed")
    parser.add_argument("--b", nargs="+", required=True, help="of model B, same seed order (or one file for all)")
    parser.add_argument("--decoding", default="greedy", help="CHAIR decoding key in the results (default: greedy)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--level", type=float, default=0.95, help="interval coverage (default: 0.95)")
    parser.add_argument("--out", help="also write the statistics as JSON here")
    args = parser.parse_args(argv)
    if len(args.b) not in (1, len(args.a)):
        parser.error(f"--b takes one file or one per --a file ({len(args.a)}); got {len(args.b)}")

    def flags(path: str) -> dict[int, bool]:
        try:
            return caption_flags(json.loads(Path(path).read_text()), args.decoding)
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"{path}: not a CHAIR evaluation with per-caption results ({err})") from err

    a = [flags(p) for p in args.a]
    b = [flags(p) for p in args.b] * (len(a) if len(args.b) == 1 else 1)
    stats = paired_chair_s(a, b, resamples=args.resamples, level=args.level)
    per_seed, (lo, hi) = stats["per_seed"], stats["interval"]
    print(f"CHAIR_s/{args.decoding} A - B over {per_seed['n']} seed(s), {stats['images']} images: "
          f"{per_seed} (per seed {', '.join(f'{v:+.4f}' for v in per_seed['values'])}); "
          f"{args.level:.0%} interval over seeds and images [{lo:+.4f}, {hi:+.4f}]")
    if args.out:
        write_json_atomic(args.out, {"a": args.a, "b": args.b, "decoding": args.decoding, **stats}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
