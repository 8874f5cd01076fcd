"""Write one scene-world split (images, COCO-format annotations, captions), e.g.

    halluremedy scenes --out data/scenes --split train --n 2000 --seed 0 --caption-noise 0.25
    halluremedy scenes --out data/tail --split base --n 20000 --seed 1 --class-weights cross=0 bar=0

(``python -m halluremedy.data.scenes`` is the same command.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from halluremedy.config import check_choices, check_range, option, required
from halluremedy.data.coco import CocoDataset
from halluremedy.data.scenes.dataset import make_dataset
from halluremedy.data.scenes.world import CLASSES, DETAILED_ORDERS, SceneConfig
from halluremedy.errors import ConfigError


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


@dataclass(frozen=True)
class ScenesConfig:
    out: str = required("dataset root (gets annotations/ and SPLIT/)")
    split: str = required("split name, e.g. train or val")
    n: int = required("number of images")
    seed: int = required("use a different seed for every split")
    caption_noise: float = option(0.0, "share of eligible captions mentioning an absent partner; keep 0 for eval "
                                  "splits")
    captions_per_image: int = option(2, "reference captions per image")
    image_size: int = option(SceneConfig.image_size, "image side in pixels")
    class_weights: tuple[str, ...] = option((), "CLASS=WEIGHT relative class frequencies (unnamed: 1), e.g. "
                                            "cross=0 bar=0 for a world without crosses and bars; none: uniform")
    detailed_order: Literal[DETAILED_ORDERS] = option("random", "order detailed captions name objects in "
                                                      "(reading: left to right, as the LLaVA-like base's "
                                                      "--detailed-order reading was trained on)")

    def __post_init__(self) -> None:
        for name in ("n", "captions_per_image", "image_size"):
            check_range(self, name, ge=1)
        check_range(self, "seed", ge=0)
        check_range(self, "caption_noise", ge=0, le=1)
        check_choices(self)
        try:
            self.scene_config()
        except ValueError as e:
            raise ConfigError(f"option '--class-weights': {e}") from None

    def scene_config(self) -> SceneConfig:
        return SceneConfig(image_size=self.image_size, class_weights=parse_class_weights(",".join(self.class_weights)),
                           detailed_order=self.detailed_order)


def write_scene_split(cfg: ScenesConfig) -> CocoDataset:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return make_dataset(cfg.out, cfg.split, cfg.n, cfg.seed, cfg.scene_config(), caption_noise=cfg.caption_noise,
                        captions_per_image=cfg.captions_per_image)
