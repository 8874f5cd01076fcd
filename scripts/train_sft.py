"""Train the tiny scene-world base model, then evaluate it; ``halluremedy train-sft`` is the same recipe.

    python scripts/train_sft.py                          # data in runs/scenes, model in runs/base/model
    python scripts/train_sft.py --cycles 300:1e-3:4000 --out runs/quick
    torchrun --nproc_per_node 2 scripts/train_sft.py --batch-size 16   # data parallel (FSDP2)

The recipe, its options and its output: :mod:`halluremedy.recipes.train_sft` (``--help``).
"""

from __future__ import annotations

from halluremedy.config import parse_config
from halluremedy.errors import run_main
from halluremedy.recipes.train_sft import SFTRecipe, train_scene_base
from halluremedy.recipes.train_sft import __doc__ as RECIPE_DOC


def main(argv: list[str] | None = None) -> None:
    train_scene_base(parse_config(SFTRecipe, RECIPE_DOC, argv))


if __name__ == "__main__":
    run_main(main)
