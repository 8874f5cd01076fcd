"""POVID vs its control over several seeds: runs ``train_dpo.py --control`` per seed, then tabulates
mean ± std of every headline metric (CHAIR greedy and sampled, recall, POPE F1 per setting) and the
same-seed differences stage 1 / stage 2 - control, stage 2 - stage 1, stage 2 - base.

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

from halluremedy.data.coco import write_json_atomic
from halluremedy.eval.run import column_order, summary_row
from halluremedy.eval.seeds import SeedStats, aggregate, paired_differences

HERE = Path(__file__).resolve().parent


COMPARISONS = (("stage1", "sft-control"), ("stage2", "sft-control"), ("stage2", "stage1"), ("stage2", "base"),
               ("sft-control", "base"))


def markdown(rows: dict[str, dict[str, SeedStats]], columns: list[str], first: str, signed: bool = False) -> str:
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        cells = [(f"{metrics[c]['mean']:+.3f} ± {metrics[c]['std']:.3f}" if signed else str(metrics[c]))
                 if c in metrics else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
    models = list(per_seed[args.seeds[0]])
    rows = {m: [per_seed[seed][m] for seed in args.seeds] for m in models}
    summary = {m: aggregate(rows[m]) for m in models}
    diffs = {f"{a} - {b}": paired_differences(rows[a], rows[b]) for a, b in COMPARISONS if a in rows and b in rows}
    columns = sorted({c for m in summary.values() for c in m if not c.startswith("len")
                      and not c.endswith("/acc")}, key=column_order)
    table = markdown(summary, columns, "model")
    paired = markdown(diffs, columns, "paired difference", signed=True)
    write_json_atomic(out / "summary.json", {"seeds": args.seeds, "train_dpo_args": passthrough,
                                             "per_seed": per_seed, "mean_std": summary,
                                             "paired_differences": diffs}, indent=2)
    (out / "summary.md").write_text(f"seeds {args.seeds}; train_dpo.py args {passthrough}\n\n"
                                    f"mean ± sample std over seeds:\n\n{table}\n\n"
                                    f"same-seed differences (same training seed and evaluation images):\n\n{paired}\n")
    print(table, paired, sep="\n\n")


if __name__ == "__main__":
    main()
