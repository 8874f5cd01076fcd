"""Diagnose -> generate -> train -> re-diagnose, with a before/after report (DFTG, REVERIE).

    python scripts/remedy_loop.py                     # seed 0, six arms (~15 min on 1 CPU thread, tiny model)
    python scripts/remedy_loop.py --seeds 0 1 2       # the full protocol: mean ± std over 3 seeds
    python scripts/remedy_loop.py --config configs/remedy_loop.yaml

The loop, its options and its output: :mod:`halluremedy.recipes.remedy_loop` (``--help``);
``halluremedy remedy`` is the same recipe.
"""

from __future__ import annotations

from halluremedy.config import parse_config
from halluremedy.errors import run_main
from halluremedy.recipes.remedy_loop import RemedyConfig, run_remedy_loop
from halluremedy.recipes.remedy_loop import __doc__ as RECIPE_DOC


def main(argv: list[str] | None = None) -> None:
    run_remedy_loop(parse_config(RemedyConfig, RECIPE_DOC, argv))


if __name__ == "__main__":
    run_main(main)
