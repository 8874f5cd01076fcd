"""POVID vs its control over several seeds: the ``train_dpo`` recipe with ``--control`` per seed, then
mean ± std of every headline metric and the same-seed differences (``OUT/summary.json``, ``summary.md``).

    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp
    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp -- --stage2-steps 200 --nll-alpha 0.5

Arguments after ``--`` go to every ``train_dpo.py`` run. The experiment, its options and its output:
:mod:`halluremedy.recipes.povid_experiment`; ``halluremedy experiment`` is the same recipe.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from halluremedy.config import parse_config
from halluremedy.errors import run_main
from halluremedy.recipes.povid_experiment import ExperimentConfig, run_povid_experiment
from halluremedy.recipes.povid_experiment import __doc__ as RECIPE_DOC


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, passthrough = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    cfg = parse_config(ExperimentConfig, RECIPE_DOC, own)
    run_povid_experiment(replace(cfg, train_dpo_args=tuple(passthrough)) if passthrough else cfg)


if __name__ == "__main__":
    run_main(main)
