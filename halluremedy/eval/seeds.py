"""Statistics over seeds: mean ± sample std of each metric, and paired (same-seed) differences.

A seed fixes the run's data order, adapters, noise *and* the evaluation's image sample, so two
models evaluated with one seed see the same images: their per-seed difference removes the image
sampling noise that the spread of each model's own mean still carries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


class SeedStats(dict):
    """``{"mean", "std", "min", "max", "n", "values"}`` of one metric over seeds."""

    def __str__(self) -> str:
        if self["n"] == 1:
            return f"{self['mean']:.3f}"
        return f"{self['mean']:.3f} ± {self['std']:.3f}"


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
