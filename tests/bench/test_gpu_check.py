"""``bench/gpu_check.py --smoke``: every stage of the GPU check runs on the CPU at toy size and passes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import gpu_check


def test_gpu_check_smoke(tmp_path):
    report = gpu_check.main(["--smoke", "--out", str(tmp_path / "check.json")])
    assert report["ok"], [r for r in report["rows"] if not r["ok"]]
    assert json.loads((tmp_path / "check.json").read_text())["ok"] and (tmp_path / "check.md").exists()
    names = {r["name"] for r in report["rows"]}
    assert {"vlm_kernels vs float64", "host syncs per optimiser step"} <= names
    assert {f"packed {b} {p}" for b in ("sdpa", "flex") for p in ("fp32", "bf16")} <= names
    training = [r for r in report["rows"] if r["stage"] == "training"]
    ours = {(r["training_stage"], r["gradient_checkpointing"]) for r in training if r["provider"] == "ours"}
    assert ours == {(1, False), (1, True), (2, False), (2, True)}
    assert {"povid", "trl-liger"} <= {r["provider"] for r in training}
    for r in training:
        assert r["samples_per_s"] > 0 and r["tokens_per_s"] > r["samples_per_s"] and r["bound_flops_per_pair"] > 0
        assert r["backend"] == ({"sdpa": 4 * 2 if r["training_stage"] == 2 else 2 * 2} if r["provider"] == "ours"
                                else {"sdpa": 1}), r
    syncs = next(r for r in report["rows"] if r["stage"] == "syncs")
    assert syncs["stage1_syncs_per_step"] == syncs["stage2_syncs_per_step"] == 1.5
