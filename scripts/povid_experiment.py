"""POVID vs its control over several seeds: runs ``train_dpo.py --control`` per seed, then tabulates
mean ± std of every headline metric (CHAIR greedy and sampled, recall, POPE F1 per setting) and the
same-seed differences stage 1 / stage 2 - control, stage 2 - stage 1, stage 2 - base.

    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp
    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp -- --stage2-steps 200 --nll-alpha 0.5

Arguments after ``--`` go to every ``train_dpo.py`` run. Finished seeds (``eval.json`` present) are reused
and interrupted ones resume (``--resume``).
Writes ``OUT/summary.json`` and ``OUT/summary.md``.

``--test-data ROOT --test-split SPLIT`` also captions every image of a large test split with every model
(greedy and sampled, the same images and sampling seed for all) and adds the same-seed CHAIR_s differences
with a 95% interval that resamples seeds and images together. Use it when the effects are as small as the
held-out sample's own noise (about ±0.01 at 1000 images)::

    python -m halluremedy.data.scenes --out runs/scenes_test --split test --n 10000 --seed 7
    python scripts/povid_experiment.py --seeds 0 1 2 3 4 --out runs/povid_sn --test-data runs/scenes_test \
        --test-split test -- --model runs/base_robust/model ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from halluremedy.data.coco import CocoDataset, write_json_atomic
from halluremedy.errors import ConfigError, run_main
from halluremedy.eval.run import EvalConfig, column_order, evaluate, summary_row
from halluremedy.eval.seeds import SeedStats, aggregate, caption_flags, paired_chair_s, paired_differences, signed_text
from halluremedy.models.generate import Decoding
from halluremedy.models.llava import load_model

HERE = Path(__file__).resolve().parent


COMPARISONS = (("stage1", "sft-control"), ("stage2", "sft-control"), ("stage2", "stage1"), ("stage2", "base"),
               ("sft-control", "base"))


def markdown(rows: dict[str, dict[str, SeedStats]], columns: list[str], first: str, signed: bool = False) -> str:
    def cell(stats: SeedStats) -> str:
        return signed_text(stats) if signed else str(stats)

    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        cells = [cell(metrics[c]) if c in metrics else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def large_split_differences(out: Path, seeds: list[int], test: CocoDataset, images: int = 0) -> dict:
    """Caption ``images`` (0: all) of ``test`` with every model of every seed run under ``out`` (each run's
    ``models.json``; a model shared by several seeds, e.g. the base, is captioned once), keep each result
    in ``OUT/test_SPLIT/``, and return ``{decoding: {"A - B": paired_chair_s statistics}}`` for COMPARISONS."""
    cfg = EvalConfig(chair_images=images or len(test), pope_images=0, pope_settings=(), seed=0,
                     caption_decodings=(Decoding(0.0, 64, 0), Decoding(1.0, 64, 0)))
    store = out / f"test_{test.split}"
    store.mkdir(parents=True, exist_ok=True)
    runs = {}
    for seed in seeds:
        listing = out / f"seed{seed}" / "models.json"
        if not listing.exists():
            raise SystemExit(f"{listing}: missing (train_dpo.py writes it; rerun that seed's train_dpo.py with "
                             f"--resume, which reuses every finished stage)")
        runs[seed] = json.loads(listing.read_text())
    users: dict[str, list[tuple[int, str]]] = {}
    for seed, models in runs.items():
        for name, path in models.items():
            users.setdefault(path, []).append((seed, name))
    paths = sorted(users)
    names: dict[str, str] = {}
    for path, used in users.items():
        name = used[0][1] if len(used) > 1 else f"seed{used[0][0]}_{used[0][1]}"
        names[path] = name if name not in names.values() else f"{name}_{len(names)}"
    results = {}
    for path in paths:
        dst = store / f"{names[path]}.json"
        if not (dst.exists() and json.loads(dst.read_text())["model"] == path):
            model, processor = load_model(path)
            write_json_atomic(dst, {"model": path, **evaluate(model, processor, test, cfg)})
        results[path] = json.loads(dst.read_text())
    decodings = {"greedy": "greedy", "sampled": next(k for k in results[paths[0]]["chair"] if k != "greedy")}
    differences = {}
    for tag, key in decodings.items():
        differences[tag] = {}
        for a, b in COMPARISONS:
            if all(a in runs[s] and b in runs[s] for s in seeds):
                flags = [[caption_flags(results[runs[s][m]], key) for s in seeds] for m in (a, b)]
                differences[tag][f"{a} - {b}"] = paired_chair_s(*flags)
    return differences


def interval_markdown(differences: dict) -> str:
    """``large_split_differences``' result as a table: mean ± std over seeds [interval] per decoding."""
    columns = [f"CHAIR_s/{d}" for d in differences]
    rows = {name: {f"CHAIR_s/{d}": SeedStats(stats[name]["per_seed"], interval=stats[name]["interval"])
                   for d, stats in differences.items()} for name in next(iter(differences.values()))}
    return markdown(rows, columns, "paired difference", signed=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/povid_exp")
    parser.add_argument("--test-data", default="", help="COCO-format root of a large test split (see above)")
    parser.add_argument("--test-split", default="test", help="its split name (default: test)")
    parser.add_argument("--test-images", type=int, default=0, help="images of it to caption (0: all)")
    args = parser.parse_args(own)
    if any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"option '--seeds': must be distinct integers >= 0, got {args.seeds}")
    if args.test_images < 0:
        raise ConfigError(f"option '--test-images': must be >= 0, got {args.test_images}")
    test = None
    if args.test_data:  # checked before any seed trains
        test = CocoDataset.load(args.test_data, args.test_split)
        test.check_sample_size(args.test_images, "--test-images")
        test.verify_images(progress=True)
    out = Path(args.out)
    per_seed = {}
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        cmd = [sys.executable, str(HERE / "train_dpo.py"), "--seed", str(seed), "--out", str(run_dir), "--control",
               "--resume", *passthrough]
        if not (run_dir / "eval.json").exists():
            print("$", " ".join(cmd), flush=True)
            if code := subprocess.run(cmd, check=False).returncode:
                raise SystemExit(code)  # train_dpo.py has said why (one line for an input error)
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
    record = {"seeds": args.seeds, "train_dpo_args": passthrough, "per_seed": per_seed, "mean_std": summary,
              "paired_differences": diffs}
    text = (f"seeds {args.seeds}; train_dpo.py args {passthrough}\n\nmean ± sample std over seeds:\n\n{table}\n\n"
            f"same-seed differences (same training seed and evaluation images):\n\n{paired}\n")
    if test is not None:
        record["test"] = {"data": f"{args.test_data}:{args.test_split}",
                          "differences": large_split_differences(out, args.seeds, test, args.test_images)}
        n = next(iter(record["test"]["differences"]["greedy"].values()))["images"]
        text += (f"\nsame-seed differences on {n} images of {record['test']['data']} (mean ± std over seeds "
                 f"[95% interval over seeds and images]):\n\n{interval_markdown(record['test']['differences'])}\n")
    write_json_atomic(out / "summary.json", record, indent=2)
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    run_main(main)
