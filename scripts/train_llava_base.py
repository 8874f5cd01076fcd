"""Rebuild the LLaVA-like scene base (the shipped ``halluremedy/assets/scene_base_llava``); ``halluremedy
train-llava-base`` is the same recipe.

    python scripts/train_llava_base.py                      # the shipped scene_base_llava (~13 min on this 2-core machine)
    python scripts/train_llava_base.py --tower runs/tower/tower --out runs/llava_b   # reuse a pretrained tower

The recipe, its options and its output: :mod:`halluremedy.recipes.train_llava_base` (``--help``).
"""

from __future__ import annotations

from halluremedy.config import parse_config
from halluremedy.errors import run_main
from halluremedy.recipes.train_llava_base import LlavaBaseRecipe, build_llava_base
from halluremedy.recipes.train_llava_base import __doc__ as RECIPE_DOC


def main(argv: list[str] | None = None) -> None:
    build_llava_base(parse_config(LlavaBaseRecipe, RECIPE_DOC, argv))


if __name__ == "__main__":
    run_main(main)
