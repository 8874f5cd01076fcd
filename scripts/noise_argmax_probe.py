"""What does POVID's noise-triggered term push down? The probe of :mod:`halluremedy.recipes.noise_probe`.

    python scripts/noise_argmax_probe.py --model halluremedy/assets/scene_base --data runs/scenes
    python scripts/noise_argmax_probe.py --model M --data D --steps 300 500 --images 300
"""

from __future__ import annotations

from halluremedy.config import parse_config
from halluremedy.errors import run_main
from halluremedy.recipes.noise_probe import NoiseProbeConfig, run_noise_probe
from halluremedy.recipes.noise_probe import __doc__ as RECIPE_DOC


def main(argv: list[str] | None = None) -> None:
    run_noise_probe(parse_config(NoiseProbeConfig, RECIPE_DOC, argv))


if __name__ == "__main__":
    run_main(main)
