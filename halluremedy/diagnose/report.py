"""Readable diagnosis reports: JSON + Markdown + a PNG chart of the worst classes, and before/after.

``write_report(diagnosis, out_dir)`` writes::

    OUT/diagnosis.json       Diagnosis.to_dict()
    OUT/report.md            summary, worst classes, triggers, attribute confusions, examples
    OUT/worst_classes.png    per-class FP / FN rates (worst first) and the top trigger pairs

``write_comparison`` writes the closed loop's before/after report (``report.md``,
``before_after.png``, ``results.json``) from the base diagnosis, every arm's re-diagnosis and
held-out evaluation rows, each arm over several seeds (mean ± sample standard deviation).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from halluremedy.data.coco import write_json_atomic
from halluremedy.diagnose.probes import Diagnosis
from halluremedy.eval.seeds import aggregate, mean_spread, paired_differences, signed_text

__all__ = ["worst_classes_figure", "write_comparison", "write_report"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def worst_classes_figure(diagnosis: Diagnosis, path: str | os.PathLike, *, top: int = 10, triggers: int = 8) -> Path:
    """Left: caption FP, probe FP and probe FN rate per class, worst hallucination rate first.
    Right: the top trigger pairs' hallucination rate with the trigger present vs absent."""
    plt = _matplotlib()
    worst = diagnosis.worst_classes(top)
    pairs = diagnosis.top_triggers(triggers)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * max(len(worst), len(pairs), 4) + 1.5), squeeze=False)
    ax = axes[0][0]
    y = np.arange(len(worst))
    for k, (key, label) in enumerate((("caption_fp_rate", "caption FP (hallucinated)"),
                                      ("probe_fp_rate", "probe FP (yes on absent)"),
                                      ("probe_fn_rate", "probe FN (no on present)"))):
        ax.barh(y + (k - 1) * 0.27, [100 * getattr(s, key) for s in worst], height=0.27, label=label)
    ax.set_yticks(y, [s.category for s in worst])
    ax.invert_yaxis()
    ax.set_xlabel("% of opportunities")
    ax.set_title("worst classes")
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax = axes[0][1]
    y = np.arange(len(pairs))
    for k, (source, dark, light) in enumerate((("caption", "tab:blue", "lightsteelblue"),
                                               ("probe", "tab:orange", "navajowhite"))):
        with_, without = zip(*(t.rates(source) for t in pairs)) if pairs else ((), ())
        ax.barh(y + (2 * k - 1.5) * 0.2, [100 * r for r in with_], height=0.2, color=dark,
                label=f"{source}, A present")
        ax.barh(y + (2 * k - 0.5) * 0.2, [100 * r for r in without], height=0.2, color=light,
                label=f"{source}, A absent")
    ax.set_yticks(y, [f"{t.present} -> {t.hallucinated}" for t in pairs])
    ax.invert_yaxis()
    ax.set_xlabel("% of images without B where B is hallucinated")
    ax.set_title("co-occurrence triggers (present A -> hallucinated B)")
    if pairs:
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _markdown(d: Diagnosis, top: int, chart: str | None) -> str:
    s = d.summary
    lines = [f"# Diagnosis: {d.meta.get('model') or 'model'}", "",
             (f"Images: {int(s.get('images', 0))} of `{d.meta.get('dataset', '?')}`, truth from "
             f"`{d.meta.get('backend', '?')}`."), ""]
    if chart:
        lines += [f"![worst classes]({chart})", ""]
    lines += ["| measure | value |", "|---|---|"]
    names = {"chair_s": "CHAIR_s (captions with a hallucination, %)", "chair_i": "CHAIR_i (hallucinated mentions, %)",
             "caption_recall": "caption recall (%)", "probe_accuracy": "existence probe accuracy (%)",
             "probe_fp_rate": "existence probe FP rate (%)", "probe_fn_rate": "existence probe FN rate (%)",
             "count_accuracy": "count accuracy, short captions (%)",
             "mean_hallucination_rate": "mean class hallucination rate (%)",
             "misnamed_share": "hallucinated caption mentions explained as misnamings (%)",
             "prior_share": "hallucinated caption mentions from the prior: absent partner or named after all present (%)",
             "source_partner": "... absent co-occurrence partner of a present object (%)",
             "source_after_all": "... named after every present object was named (%)",
             "source_other": "... neither: mostly a present object named as another class (%)"}
    lines += [f"| {label} | {_pct(s[k])} |" for k, label in names.items() if k in s]
    lines += ["", "## Worst classes", "",
              "| class | hallucination rate | caption FP | probe FP | caption FN | probe FN | count errors | present / absent |",
              "|---|---|---|---|---|---|---|---|"]
    for c in d.worst_classes(top):
        lines.append(f"| {c.category} | {_pct(c.hallucination_rate)} | {_pct(c.caption_fp_rate)} | "
                     f"{_pct(c.probe_fp_rate)} | {_pct(c.caption_fn_rate)} | {_pct(c.probe_fn_rate)} | "
                     f"{c.count_wrong}/{c.count_checked} | {c.n_present} / {c.n_absent} |")
    lines += ["", "## Co-occurrence triggers (present A -> hallucinated B)", "",
              ("Rates on images without B, with A present vs without A; excess = hallucinations beyond the "
              "without-A rate (caption + probe)."), "",
              "| A -> B | caption: with A / without A | probe: with A / without A | images (with A) | excess |",
              "|---|---|---|---|---|"]
    for t in d.top_triggers(top):
        (cr, cb), (pr, pb) = t.rates("caption"), t.rates("probe")
        lines.append(f"| {t.present} -> {t.hallucinated} | {_pct(cr)} / {_pct(cb)} | {_pct(pr)} / {_pct(pb)} | "
                     f"{t.opportunities} | {t.excess:.1f} |")
    if d.misnamings:
        lines += ["", "## Misnamings (present A named as absent B)", "",
                  "Matched by the colour/size words the caption gives the hallucinated mention.", "",
                  "| A named B | mentions |", "|---|---|"]
        lines += [f"| {m.true} -> {m.said} | {m.count:.1f} |" for m in d.misnamings[:top]]
    lines += ["", "## Attributes", ""]
    for attribute, row in d.attribute_accuracy.items():
        parts = [f"{source} accuracy {_pct(row[f'{source}_accuracy'])}% of {int(row[f'{source}_checked'])}"
                 for source in ("caption", "probe") if f"{source}_accuracy" in row]
        lines.append(f"- {attribute}: " + "; ".join(parts))
    if d.attribute_confusions:
        lines += ["", "| attribute | class | true | said | count | source |", "|---|---|---|---|---|---|"]
        lines += [f"| {a.attribute} | {a.category} | {a.true} | {a.said} | {a.count} | {a.source} |"
                  for a in d.attribute_confusions[:top]]
    if d.meta.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(d.meta["skipped"])]
    if d.examples:
        lines += ["", "## Examples", ""]
        lines += [f"- image {e['image_id']} ({', '.join(e['truth'])}): \"{e['caption']}\" -> hallucinated "
                  f"{', '.join(e['hallucinated'])}" for e in d.examples]
    return "\n".join(lines) + "\n"


def write_report(diagnosis: Diagnosis, out_dir: str | os.PathLike, *, top: int = 10) -> dict[str, Path]:
    """Write ``diagnosis.json``, ``report.md`` and ``worst_classes.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "diagnosis.json", "markdown": out / "report.md", "chart": out / "worst_classes.png"}
    diagnosis.save(paths["json"])
    worst_classes_figure(diagnosis, paths["chart"], top=top)
    paths["markdown"].write_text(_markdown(diagnosis, top, paths["chart"].name))
    return paths


# --- before / after over seeds ------------------------------------------------------------------

def write_comparison(before: Diagnosis, after: Mapping[str, Sequence[Diagnosis]],
                     eval_rows: Mapping[str, Sequence[Mapping[str, float]]], out_dir: str | os.PathLike, *,
                     comparisons: Sequence[tuple[str, str]] = (), columns: Sequence[str] = (),
                     notes: Sequence[str] = (), extra: Mapping | None = None, top: int = 10,
                     test_differences: Mapping[str, Mapping] | None = None, test_label: str = "",
                     class_rows: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
                     class_label: str = "") -> dict[str, Path]:
    """The loop's before/after report.

    ``after[arm]``: the arm's re-diagnoses (one per seed); ``eval_rows[arm]``: its held-out
    evaluation rows (one per seed; ``"base"`` may be among the arms, with one row). ``comparisons``:
    (arm, arm) pairs to set side by side with the per-seed differences; ``columns``: which metrics
    the tables show (all, when empty). ``test_differences``: ``"A - B"`` -> ``paired_chair_s``
    statistics on a large test split (``test_label`` names it), reported with their intervals.
    ``class_rows[arm]``: ``class_row`` figures per seed on the captions ``class_label`` names, tabled
    per class (mean over seeds): which classes each arm over-names and which it stops seeing.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    held = {arm: aggregate(rows) for arm, rows in eval_rows.items() if rows}
    diag_rows = {arm: [{**{f"diag/{k}": v for k, v in d.summary.items()},
                        **{f"diag/hallucination/{c}": s.hallucination_rate for c, s in d.classes.items()}}
                       for d in ds] for arm, ds in after.items() if ds}
    diag_rows["base"] = [{**{f"diag/{k}": v for k, v in before.summary.items()},
                          **{f"diag/hallucination/{c}": s.hallucination_rate for c, s in before.classes.items()}}]
    diag = {arm: aggregate(rows) for arm, rows in diag_rows.items()}
    worst = [s.category for s in before.worst_classes(top)]

    # per-seed differences for each comparison (paired by seed order)
    diffs = {f"{a} - {b}": paired_differences(eval_rows[a], eval_rows[b])
             for a, b in comparisons if eval_rows.get(a) and eval_rows.get(b)}

    cols = list(columns) or sorted({k for stats in held.values() for k in stats})
    lines = ["# Diagnose -> generate -> train -> re-diagnose", "",
             "![before/after](before_after.png)", "",
             "## Held-out evaluation (mean ± sample std over seeds)", "",
             "| arm | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for arm, stats in held.items():
        n = max(s["n"] for s in stats.values())
        lines.append(f"| {arm} | {n} | " + " | ".join(str(stats[c]) if c in stats else "" for c in cols) + " |")
    if diffs:
        lines += ["", "## Paired differences (same seed; mean ± std of the per-seed difference)", "",
                  "| comparison | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, stats in diffs.items():
            lines.append(f"| {name} | " + " | ".join(f"{stats[c]['mean']:+.3f} ± {stats[c]['std']:.3f}"
                                                     if c in stats else "" for c in cols) + " |")
    if test_differences:
        lines += ["", f"## Greedy CHAIR_s on {test_label}: same-seed differences", "",
                  "mean ± std over seeds [95% interval, bootstrapping seeds and images together]", "",
                  "| comparison | CHAIR_s | images |", "|---|---|---|"]
        for name, stats in test_differences.items():
            lines.append(f"| {name} | {signed_text({**stats['per_seed'], 'interval': stats['interval']})} | "
                         f"{stats['images']} |")
    by_class = {arm: aggregate(rows) for arm, rows in (class_rows or {}).items() if rows}
    if by_class:
        lines += _class_tables(by_class, class_label)
    dcols = ["diag/mean_hallucination_rate", "diag/probe_fp_rate", "diag/chair_i"] + \
        [f"diag/hallucination/{c}" for c in worst[:5]]
    lines += ["", "## Re-diagnosis on the diagnosis split (hallucination rates; base = before)", "",
              "| arm | " + " | ".join(c.removeprefix("diag/") for c in dcols) + " |", "|---" * (len(dcols) + 1) + "|"]
    for arm, stats in diag.items():
        lines.append(f"| {arm} | " + " | ".join(str(stats[c]) if c in stats else "" for c in dcols) + " |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (out / "report.md").write_text("\n".join(lines) + "\n")

    _before_after_figure(before, after, worst, out / "before_after.png")
    write_json_atomic(out / "results.json", {"held_out": held, "paired_differences": diffs, "rediagnosis": diag,
                                             "per_seed": {arm: list(rows) for arm, rows in eval_rows.items()},
                                             **({"test": {"split": test_label, "differences": test_differences}}
                                                if test_differences else {}),
                                             **({"by_class": {"split": class_label, "arms": by_class}} if by_class else {}),
                                             **(dict(extra) if extra else {})}, indent=2)
    return {"markdown": out / "report.md", "chart": out / "before_after.png", "json": out / "results.json"}


def _class_tables(stats: Mapping[str, Mapping[str, Mapping]], label: str) -> list[str]:
    """Markdown: hallucinated mentions per 1000 captions and recall, one column per class (classes
    by the first arm's hallucinated mentions, most first), one row per arm."""
    first = next(iter(stats.values()))
    classes = sorted(sorted({k.split("/")[1] for arm in stats.values() for k in arm if k.startswith("class/")}),
                     key=lambda c: -first.get(f"class/{c}/hallucinated", {"mean": 0.0})["mean"])
    lines = []
    for key, title, scale, fmt in (("hallucinated", "hallucinated mentions per 1000 captions", 1000, "{:.0f}"),
                                   ("recall", "recall (share of the images holding the class that name it)", 1,
                                    "{:.2f}")):
        lines += ["", f"## By class on {label}: {title} (mean over seeds)", "",
                  "| arm | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        for arm, row in stats.items():
            cells = [fmt.format(scale * row[f"class/{c}/{key}"]["mean"]) if f"class/{c}/{key}" in row else ""
                     for c in classes]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _before_after_figure(before: Diagnosis, after: Mapping[str, Sequence[Diagnosis]], classes: Sequence[str],
                         path: Path) -> None:
    """Per-class hallucination rate: the base, then each arm (mean over seeds, std as error bars)."""
    plt = _matplotlib()
    arms = [a for a, ds in after.items() if ds]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(classes) + 2), 4.5))
    width = 0.8 / (1 + len(arms))
    x = np.arange(len(classes))
    ax.bar(x - 0.4 + width / 2, [100 * before.classes[c].hallucination_rate for c in classes], width,
           label="before (base)", color="black")
    for k, arm in enumerate(arms, 1):
        stats = [mean_spread([d.classes[c].hallucination_rate for d in after[arm]]) for c in classes]
        ax.bar(x - 0.4 + width * (k + 0.5), [100 * s["mean"] for s in stats], width,
               yerr=[100 * s["std"] for s in stats], capsize=2, label=arm)
    ax.set_xticks(x, classes, rotation=30)
    ax.set_ylabel("hallucination rate (%)")
    ax.set_title("per-class hallucination on the diagnosis split, worst classes of the base first")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
