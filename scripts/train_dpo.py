"""POVID on a LLaVA model: stage 1, stage 2, evaluation; ``halluremedy train-dpo`` is the same recipe.

    python scripts/train_dpo.py                    # the embedded default, end to end on a CPU
    python scripts/train_dpo.py --control          # also the continued-SFT control, same data and budget
    python scripts/train_dpo.py --config configs/llava15_7b_1gpu.yaml --model /ckpt/llava-1.5-7b-hf \\
        --data /data/coco --pairs povid_17k.jsonl
    torchrun --nproc_per_node 8 scripts/train_dpo.py --config configs/llava15_7b_1gpu.yaml ...

The recipe, its options and its output: :mod:`halluremedy.recipes.train_dpo` (``--help``).
"""

from __future__ import annotations

from halluremedy.config import parse_config
from halluremedy.errors import run_main
from halluremedy.recipes.train_dpo import DPORecipe, train_dpo
from halluremedy.recipes.train_dpo import __doc__ as RECIPE_DOC


def main(argv: list[str] | None = None) -> None:
    train_dpo(parse_config(DPORecipe, RECIPE_DOC, argv))


if __name__ == "__main__":
    run_main(main)
