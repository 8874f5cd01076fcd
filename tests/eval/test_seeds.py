"""Seed statistics: mean ± sample std and paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from halluremedy.eval.seeds import aggregate, caption_flags, mean_spread, paired_chair_s, paired_differences


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


def _result(flags: dict[int, bool]) -> dict:
    return {"chair": {"greedy": {"per_caption": [{"image_id": i, "hallucinated": [{"category": "x"}] if f else []}
                                                 for i, f in flags.items()]}}}


def test_caption_flags_read_an_evaluation():
    assert caption_flags(_result({3: True, 5: False})) == {3: True, 5: False}
    with pytest.raises(KeyError, match="sampled"):
        caption_flags(_result({3: True}), "sampled")


def test_paired_chair_s_differences_and_interval():
    rng = np.random.default_rng(1)
    a = [{i: bool(rng.random() < 0.5) for i in range(400)} for _ in range(3)]
    b = [{i: bool(rng.random() < 0.6) for i in range(400)} for _ in range(3)]
    b[0][999] = True  # an image only one run captioned is left out
    stats = paired_chair_s(a, b, resamples=500)
    expected = [np.mean([ra[i] - rb[i] for i in range(400)]) for ra, rb in zip(a, b)]
    assert stats["images"] == 400 and stats["per_seed"]["values"] == pytest.approx(expected)
    lo, hi = stats["interval"]
    assert lo < np.mean(expected) < hi and hi - lo < 0.2
    assert paired_chair_s(a, b, resamples=500) == stats  # seeded
    wider = paired_chair_s(a, b, resamples=500, level=0.99)["interval"]
    assert wider[0] < lo and wider[1] > hi
    # differences that are the same on every image and seed leave nothing to resample
    ones, zeros = [dict.fromkeys(range(50), True)] * 2, [dict.fromkeys(range(50), False)] * 2
    assert paired_chair_s(ones, zeros, resamples=50)["interval"] == (1.0, 1.0)
    with pytest.raises(ValueError, match="equally many"):
        paired_chair_s(a, b[:2])
    with pytest.raises(ValueError, match="no image in common"):
        paired_chair_s([{1: True}], [{2: True}])
