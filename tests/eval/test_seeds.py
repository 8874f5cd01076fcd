"""Seed statistics: mean ± sample std and paired differences."""

from __future__ import annotations

import pytest

from halluremedy.eval.seeds import aggregate, mean_spread, paired_differences


def test_mean_spread():
    s = mean_spread([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and (s["min"], s["max"], s["n"]) == (1.0, 3.0, 3)
    assert str(s) == "2.000 ± 1.000"
    assert mean_spread([0.5])["std"] == 0.0 and str(mean_spread([0.5])) == "0.500"
    with pytest.raises(ValueError):
        mean_spread([])


def test_aggregate_and_paired_differences():
    a = [{"x": 0.5, "y": 1.0}, {"x": 0.7, "y": 3.0}, {"x": 0.9}]
    b = [{"x": 0.4}, {"x": 0.7}, {"x": 0.6}]
    stats = aggregate(a)
    assert stats["x"]["mean"] == pytest.approx(0.7) and stats["y"]["n"] == 2 and stats["y"]["mean"] == 2.0
    # per-seed differences 0.1, 0.0, 0.3: mean 0.1333, sample std sqrt(((-0.0333)^2 + 0.1333^2 + 0.1667^2) / 2)
    d = paired_differences(a, b)
    assert list(d) == ["x"]
    assert d["x"]["mean"] == pytest.approx(0.4 / 3) and d["x"]["std"] == pytest.approx(0.152752523, rel=1e-6)
    # the paired spread is below the spread of either mean when the seeds move both models alike
    assert d["x"]["std"] < mean_spread([0.5, 0.7, 0.9])["std"]
    with pytest.raises(ValueError, match="equally many"):
        paired_differences(a, b[:2])
