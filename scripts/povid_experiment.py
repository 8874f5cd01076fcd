"""POVID vs its control over several seeds: the ``train_dpo`` recipe with ``--control`` per seed, then
mean ± std of every headline metric and the same-seed differences (``OUT/summary.json``, ``summary.md``).

    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp
    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp -- --stage2-steps 200 --nll-alpha 0.5

Arguments after ``--`` go to every ``train_dpo.py`` run. The experiment, its options and its output:
:mod:`halluremedy.recipes.povid_experiment`; ``halluremedy experiment`` is the same recipe.
"""

from __future__ import annotations

import argparse
import sys

from halluremedy.errors import run_main
from halluremedy.recipes.povid_experiment import ExperimentConfig, run_povid_experiment
from halluremedy.recipes.povid_experiment import __doc__ as RECIPE_DOC


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=RECIPE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/povid_exp")
    parser.add_argument("--test-data", default="", help="COCO-format root of a large test split (see above)")
    parser.add_argument("--test-split", default="test", help="its split name (default: test)")
    parser.add_argument("--test-images", type=int, default=0, help="images of it to caption (0: all)")
    args = parser.parse_args(own)
    run_povid_experiment(ExperimentConfig(tuple(args.seeds), args.out, args.test_data, args.test_split,
                                          args.test_images, tuple(passthrough)))


if __name__ == "__main__":
    run_main(main)
