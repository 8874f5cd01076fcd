"""Statistics over seeds: mean ± sample std of each metric, and paired (same-seed) differences.

A seed fixes the run's data order, adapters, noise *and* the evaluation's image sample, so two
models evaluated with one seed see the same images: their per-seed difference removes the image
sampling noise that the spread of each model's own mean still carries. When every seed captions
the same images, that image sample's noise is shared by all seeds instead: ``paired_chair_s``
bootstraps seeds and images together to carry it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


class SeedStats(dict):
    """``{"mean", "std", "min", "max", "n", "values"}`` of one metric over seeds."""

    def __str__(self) -> str:
        if self["n"] == 1:
            return f"{self['mean']:.3f}"
        return f"{self['mean']:.3f} ± {self['std']:.3f}"


def signed_text(stats: Mapping) -> str:
    """``"+0.012 ± 0.004"`` for a difference's ``mean``/``std``, then ``" [-0.001, +0.020]"`` when it
    carries an ``interval``."""
    text = f"{stats['mean']:+.3f} ± {stats['std']:.3f}"
    return text + (" [{:+.3f}, {:+.3f}]".format(*stats["interval"]) if "interval" in stats else "")


def mean_spread(values: Sequence[float]) -> SeedStats:
    """Mean and sample standard deviation (0 for a single value), with min, max and the values."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("mean_spread: no values")
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return SeedStats(mean=mean, std=std, min=min(v), max=max(v), n=len(v), values=v)


def aggregate(rows: Sequence[Mapping[str, float]]) -> dict[str, SeedStats]:
    """One metric row per seed -> metric -> its statistics (over the rows that have it)."""
    keys = sorted({k for r in rows for k in r})
    return {k: mean_spread([r[k] for r in rows if k in r]) for k in keys}


def paired_differences(a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]]) -> dict[str, SeedStats]:
    """Statistics of ``a[i][k] - b[i][k]`` over seeds i (rows in the same seed order), per shared metric."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_differences needs equally many rows (>= 1); got {len(a)} and {len(b)}")
    keys = sorted(set(a[0]) & set(b[0]))
    return {k: mean_spread([ra[k] - rb[k] for ra, rb in zip(a, b)]) for k in keys}


def caption_flags(result: Mapping, decoding: str = "greedy") -> dict[int, bool]:
    """``image_id -> whether its caption names a hallucinated object`` from an ``evaluate`` result."""
    if decoding not in result["chair"]:
        raise KeyError(f"no CHAIR decoding {decoding!r} in this result; it has {sorted(result['chair'])}")
    return {c["image_id"]: bool(c["hallucinated"]) for c in result["chair"][decoding]["per_caption"]}


def paired_chair_s(a: Sequence[Mapping[int, bool]], b: Sequence[Mapping[int, bool]], *, resamples: int = 2000,
                   level: float = 0.95, seed: int = 0) -> dict:
    """Same-seed CHAIR_s differences ``a[i] - b[i]`` on the images every run captioned, with a bootstrap
    interval of their mean that resamples seeds and images together.

    ``a[i]``/``b[i]``: image_id -> hallucinated, for seed i (e.g. ``caption_flags`` of two models
    evaluated on one image set). The spread over seeds alone misses the image sample's own noise,
    which every seed shares when they caption the same images; the joint bootstrap carries both.
    Returns ``{"per_seed": SeedStats of the differences, "interval": (lo, hi), "images": N}``.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_chair_s needs equally many runs (>= 1); got {len(a)} and {len(b)}")
    images = sorted(set.intersection(*(set(x) for x in (*a, *b))))
    if not images:
        raise ValueError("paired_chair_s: the runs captioned no image in common")
    diff = np.array([[float(ra[i]) - float(rb[i]) for i in images] for ra, rb in zip(a, b)])  # (seeds, images)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        rows = diff[rng.integers(0, diff.shape[0], diff.shape[0])]
        means[r] = rows[:, rng.integers(0, diff.shape[1], diff.shape[1])].mean()
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return {"per_seed": mean_spread(diff.mean(axis=1).tolist()), "interval": (float(lo), float(hi)),
            "images": len(images)}
