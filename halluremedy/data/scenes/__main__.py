"""``python -m halluremedy.data.scenes``: the front door of :mod:`halluremedy.recipes.scenes`
(``halluremedy scenes`` is the same command)."""

from __future__ import annotations

from halluremedy.config import parse_config
from halluremedy.errors import run_main
from halluremedy.recipes.scenes import ScenesConfig, parse_class_weights, write_scene_split
from halluremedy.recipes.scenes import __doc__ as RECIPE_DOC

__all__ = ["main", "parse_class_weights"]


def main(argv: list[str] | None = None) -> None:
    write_scene_split(parse_config(ScenesConfig, RECIPE_DOC, argv, prog="python -m halluremedy.data.scenes"))


if __name__ == "__main__":
    run_main(main)
