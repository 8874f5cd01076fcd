"""``python -m halluremedy.generate``: the front door of :mod:`halluremedy.recipes.generate`
(``halluremedy generate`` is the same command)."""

from __future__ import annotations

from halluremedy.config import parse_config
from halluremedy.errors import run_main
from halluremedy.recipes.generate import GenerateConfig, generate
from halluremedy.recipes.generate import __doc__ as RECIPE_DOC


def main(argv: list[str] | None = None) -> None:
    generate(parse_config(GenerateConfig, RECIPE_DOC, argv, prog="python -m halluremedy.generate"))


if __name__ == "__main__":
    run_main(main)
