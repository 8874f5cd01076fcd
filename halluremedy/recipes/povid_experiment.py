"""POVID vs its control over several seeds (``scripts/povid_experiment.py``, ``halluremedy experiment``;
:func:`run_povid_experiment`): runs the ``train_dpo`` recipe with ``--control`` per seed, then tabulates
mean ± std of every headline metric (CHAIR greedy and sampled, recall, POPE F1 per setting) and the
same-seed differences stage 1 / stage 2 - control, stage 2 - stage 1, stage 2 - base.

    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp
    python scripts/povid_experiment.py --seeds 0 1 2 --out runs/povid_exp -- --stage2-steps 200 --nll-alpha 0.5

Arguments after ``--`` go to every ``train_dpo.py`` run (``train_dpo_args``; each seed's run is
``train_dpo.py --seed S --out OUT/seedS --control --resume ARGS``, in this process). Finished seeds (``eval.json`` present) are reused
and interrupted ones resume (``--resume``).
Writes ``OUT/summary.json`` and ``OUT/summary.md``.

``--test-data ROOT --test-split SPLIT`` also captions every image of a large test split with every model
(greedy and sampled, the same images and sampling seed for all) and adds the same-seed CHAIR_s differences
with a 95% interval that resamples seeds and images together. Use it when the effects are as small as the
held-out sample's own noise (about ±0.01 at 1000 images)::

    halluremedy scenes --out runs/scenes_test --split test --n 10000 --seed 7
    python scripts/povid_experiment.py --seeds 0 1 2 3 4 --out runs/povid_sn --test-data runs/scenes_test \\
        --test-split test -- --model runs/base_robust/model ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from halluremedy.config import check, check_range, option, parse_config
from halluremedy.data.coco import CocoDataset, write_json_atomic
from halluremedy.eval.run import EvalConfig, column_order, evaluate, summary_row
from halluremedy.eval.seeds import SeedStats, aggregate, caption_flags, paired_chair_s, paired_differences, signed_text
from halluremedy.models.generate import Decoding
from halluremedy.models.llava import load_model
from halluremedy.recipes import train_dpo


@dataclass(frozen=True)
class ExperimentConfig:
    seeds: tuple[int, ...] = option((0, 1, 2), "training seeds, distinct integers >= 0")
    out: str = option("runs/povid_exp", "output directory: OUT/seedS per seed, OUT/summary.json and summary.md")
    test_data: str = option("", "COCO-format root of a large test split (see above)")
    test_split: str = option("test", "its split name")
    test_images: int = option(0, "images of it to caption (0: all)")
    train_dpo_args: tuple[str, ...] = option((), "flags of every seed's train_dpo run: after -- for the script, "
                                             "a YAML list, or --train-dpo-args=--stage2-steps,200")

    def __post_init__(self) -> None:
        """Every option checked before anything trains (ConfigError names the flag)."""
        check(all(s >= 0 for s in self.seeds) and len(set(self.seeds)) == len(self.seeds), "seeds",
              "must be distinct integers >= 0", list(self.seeds))
        check_range(self, "test_images", ge=0)

    def seed_args(self, seed: int) -> list[str]:
        """The train_dpo flags of ``seed``'s run."""
        return ["--seed", str(seed), "--out", str(Path(self.out) / f"seed{seed}"), "--control", "--resume",
                *self.train_dpo_args]


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


def run_povid_experiment(cfg: ExperimentConfig) -> dict:
    """Train (or reuse) every seed's run, then write and return ``OUT/summary.json``'s record."""
    seeds = list(cfg.seeds)
    test = None
    if cfg.test_data:  # checked before any seed trains
        test = CocoDataset.load(cfg.test_data, cfg.test_split)
        test.check_sample_size(cfg.test_images, "--test-images")
        test.verify_images(progress=True)
    recipes = {seed: parse_config(train_dpo.DPORecipe, train_dpo.__doc__, cfg.seed_args(seed)) for seed in seeds}
    out = Path(cfg.out)
    per_seed = {}
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        if not (run_dir / "eval.json").exists():
            print("$ train_dpo.py", " ".join(cfg.seed_args(seed)), flush=True)
            train_dpo.train_dpo(recipes[seed])
        results = json.loads((run_dir / "eval.json").read_text())["results"]
        per_seed[seed] = {model: summary_row(r) for model, r in results.items()}
    models = list(per_seed[seeds[0]])
    rows = {m: [per_seed[seed][m] for seed in seeds] for m in models}
    summary = {m: aggregate(rows[m]) for m in models}
    diffs = {f"{a} - {b}": paired_differences(rows[a], rows[b]) for a, b in COMPARISONS if a in rows and b in rows}
    columns = sorted({c for m in summary.values() for c in m if not c.startswith("len")
                      and not c.endswith("/acc")}, key=column_order)
    table = markdown(summary, columns, "model")
    paired = markdown(diffs, columns, "paired difference", signed=True)
    passthrough = list(cfg.train_dpo_args)
    record = {"seeds": seeds, "train_dpo_args": passthrough, "per_seed": per_seed, "mean_std": summary,
              "paired_differences": diffs}
    text = (f"seeds {seeds}; train_dpo.py args {passthrough}\n\nmean ± sample std over seeds:\n\n{table}\n\n"
            f"same-seed differences (same training seed and evaluation images):\n\n{paired}\n")
    if test is not None:
        record["test"] = {"data": f"{cfg.test_data}:{cfg.test_split}",
                          "differences": large_split_differences(out, seeds, test, cfg.test_images)}
        n = next(iter(record["test"]["differences"]["greedy"].values()))["images"]
        text += (f"\nsame-seed differences on {n} images of {record['test']['data']} (mean ± std over seeds "
                 f"[95% interval over seeds and images]):\n\n{interval_markdown(record['test']['differences'])}\n")
    write_json_atomic(out / "summary.json", record, indent=2)
    (out / "summary.md").write_text(text)
    print(text)
    return record
