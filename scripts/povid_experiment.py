"""POVID vs its control over several seeds: runs ``train_dpo.py --control`` per seed, then tabulates
mean ± std of every headline metric (CHAIR greedy and sampled, recall, POPE F1 per setting).

    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp
    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp -- --stage2-steps 200 --nll-alpha 0.5

Arguments after ``--`` go to every ``train_dpo.py`` run. Finished seeds (``eval.json`` present) are reused
and interrupted ones resume (``--resume``).
Writes ``OUT/summary.json`` and ``OUT/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from halluremedy.data.coco import write_json_atomic
from halluremedy.eval.run import column_order, summary_row

HERE = Path(__file__).resolve().parent


def aggregate(per_seed: dict[int, dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """model -> metric -> (mean, sample std) over seeds (std 0 with one seed)."""
    models = next(iter(per_seed.values())).keys()
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for model in models:
        metrics = per_seed[next(iter(per_seed))][model].keys()
        out[model] = {}
        for m in metrics:
            values = np.array([per_seed[s][model][m] for s in per_seed])
            out[model][m] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return out


def markdown(summary: dict[str, dict[str, tuple[float, float]]], columns: list[str]) -> str:
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model, metrics in summary.items():
        cells = [f"{metrics[c][0]:.3f} ± {metrics[c][1]:.3f}" if c in metrics else "" for c in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/povid_exp")
    args = parser.parse_args(own)
    out = Path(args.out)
    per_seed = {}
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        cmd = [sys.executable, str(HERE / "train_dpo.py"), "--seed", str(seed), "--out", str(run_dir), "--control",
               "--resume", *passthrough]
        if not (run_dir / "eval.json").exists():
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        results = json.loads((run_dir / "eval.json").read_text())["results"]
        per_seed[seed] = {model: summary_row(r) for model, r in results.items()}
    summary = aggregate(per_seed)
    columns = sorted({c for m in summary.values() for c in m if not c.startswith("len")
                      and not c.endswith("/acc")}, key=column_order)
    table = markdown(summary, columns)
    write_json_atomic(out / "summary.json", {"seeds": args.seeds, "train_dpo_args": passthrough,
                                             "per_seed": per_seed, "mean_std": summary}, indent=2)
    (out / "summary.md").write_text(f"seeds {args.seeds}; train_dpo.py args {passthrough}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
