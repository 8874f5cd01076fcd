"""Shared fixtures: a tiny hand-made COCO-format dataset and a tiny LLaVA that speaks its words."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from halluremedy.data.coco import CocoDataset, write_coco
from halluremedy.models.llava import TinyLlavaSpec, build_tiny_llava
from halluremedy.prompts import prompt_words

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
CLASSES = ["square", "circle", "bar"]


def make_tiny_coco(root: Path, split: str = "train", n: int = 6) -> CocoDataset:
    """``n`` 32-px images; image k holds a coloured square and, for odd k, a circle."""
    (root / split).mkdir(parents=True, exist_ok=True)
    images, anns, caps = [], [], []
    for k in range(n):
        color = list(COLORS)[k % 3]
        im = Image.new("RGB", (32, 32), (0, 0, 0))
        im.paste(COLORS[color], (2, 2, 14, 14))
        anns.append((k + 1, "square", (2, 2, 12, 12), {"color": color}))
        cap = f"a {color} square"
        if k % 2:
            im.paste((255, 255, 255), (18, 18, 30, 30))
            anns.append((k + 1, "circle", (18, 18, 12, 12), {"color": "white"}))
            cap += " and a white circle"
        im.save(root / split / f"{k:04d}.png")
        images.append((f"{k:04d}.png", 32, 32))
        caps.append((k + 1, cap + "."))
    write_coco(root, split, images, CLASSES, anns, caps,
               synonyms={"square": ["square", "box"], "circle": ["circle", "disc"], "bar": ["bar"]})
    return CocoDataset.load(root, split)


TEXTS = prompt_words() + ["a red blue green white square circle box disc bar and .", "yes", "no"]


@pytest.fixture
def tiny_coco(tmp_path) -> CocoDataset:
    return make_tiny_coco(tmp_path / "coco")


@pytest.fixture(scope="session")
def tiny_llava_factory():
    """``factory(seed)`` -> fresh (model, processor) covering the tiny COCO words."""
    return lambda seed=0: build_tiny_llava(TinyLlavaSpec(), TEXTS, seed=seed)
