"""CLI: write one scene-world split, e.g.

    python -m halluremedy.data.scenes --out data/scenes --split train --n 2000 --seed 0 --caption-noise 0.25
    python -m halluremedy.data.scenes --out data/tail --split base --n 20000 --seed 1 --class-weights cross=0,bar=0
"""

from __future__ import annotations

import argparse
import logging

from halluremedy.data.scenes.dataset import make_dataset
from halluremedy.data.scenes.world import CLASSES, SceneConfig


def parse_class_weights(text: str) -> tuple[float, ...]:
    """``"cross=0,bar=0.1"`` -> one weight per class in ``CLASSES`` order (unnamed classes: 1); "" -> ()."""
    if not text.strip():
        return ()
    weights = dict.fromkeys(CLASSES, 1.0)
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in weights:
            raise ValueError(f"--class-weights item {item!r}: expected CLASS=WEIGHT with CLASS one of {list(CLASSES)}")
        weights[name] = float(value)
    return tuple(weights.values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m halluremedy.data.scenes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="dataset root (gets annotations/ and SPLIT/)")
    parser.add_argument("--split", required=True, help="split name, e.g. train or val")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, required=True, help="use a different seed for every split")
    parser.add_argument("--caption-noise", type=float, default=0.0,
                        help="share of eligible captions mentioning an absent partner; keep 0 for eval splits")
    parser.add_argument("--captions-per-image", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=SceneConfig.image_size)
    parser.add_argument("--class-weights", default="",
                        help="CLASS=WEIGHT,... relative class frequencies (unnamed: 1), e.g. cross=0,bar=0 for a "
                             "world without crosses and bars; empty: uniform")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = SceneConfig(image_size=args.image_size, class_weights=parse_class_weights(args.class_weights))
    make_dataset(args.out, args.split, args.n, args.seed, cfg,
                 caption_noise=args.caption_noise, captions_per_image=args.captions_per_image)


if __name__ == "__main__":
    main()
