"""Shared fixtures: a tiny hand-made COCO-format dataset and a tiny LLaVA that speaks its words."""

from __future__ import annotations

import pytest
from helpers import make_tiny_coco

from halluremedy.data.coco import CocoDataset
from halluremedy.models.llava import TinyLlavaSpec, build_tiny_llava
from halluremedy.prompts import prompt_words

TEXTS = prompt_words() + ["a red blue green white square circle box disc bar and .", "yes", "no"]


@pytest.fixture
def tiny_coco(tmp_path) -> CocoDataset:
    return make_tiny_coco(tmp_path / "coco")


@pytest.fixture
def tiny_coco_split(tmp_path):
    """``tiny_coco_split(split, n)``: another split of the tiny dataset, in ``tmp_path / "coco"`` too."""
    return lambda split="train", n=6: make_tiny_coco(tmp_path / "coco", split, n)


@pytest.fixture(scope="session")
def tiny_llava_factory():
    """``factory(seed)`` -> fresh (model, processor) covering the tiny COCO words."""
    return lambda seed=0: build_tiny_llava(TinyLlavaSpec(), TEXTS, seed=seed)
