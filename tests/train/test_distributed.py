"""torchrun data parallelism on gloo (CPU): 2 ranks x micro-batch 4 train what 1 process x micro-batch 8
trains, for stage 1, stage 2 (reference log-probs precomputed in parallel) and the SFT control (LoRA:
DDP), and a full fine-tune of stage 1 (FSDP2); a run whose rank dies mid-way resumes to the same
curve and weights.

Tolerance: float32, the two runs sum the same gradients in a different order (per rank, then the
all-reduce): loss rows within 1e-5 relative, weights within 1e-5 absolute; the resumed run is exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_coco, tiny_preference_records
from safetensors.torch import load_file

from halluremedy.data.preference import write_preferences
from halluremedy.models.llava import save_model

WORKER = Path(__file__).with_name("ddp_worker.py")
STAGES = ("stage1", "stage2", "control", "full")


def _launch(root: Path, out: str, nproc: int, batch_size: int, *extra: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    args = ["--data", str(root / "coco"), "--base", str(root / "base"), "--pairs", str(root / "pairs.jsonl"),
            "--out", str(root / out), "--batch-size", str(batch_size), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*launcher, str(WORKER), *args], env=env, capture_output=True, text=True, timeout=600)


def _losses(run: Path, stage: str) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / stage / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(run / stage / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llava_factory):
    root = tmp_path_factory.mktemp("ddp")
    dataset = make_tiny_coco(root / "coco", "train", 8)
    model, processor = tiny_llava_factory(0)
    save_model(model, processor, root / "base")
    write_preferences(root / "pairs.jsonl", tiny_preference_records(dataset))
    for out, nproc, batch, extra in (("single", 1, 8, ()), ("ddp", 2, 4, ()), ("killed", 2, 4, ("--die-after-save", "2"))):
        done = _launch(root, out, nproc, batch, *extra)
        assert (done.returncode == 0) == (out != "killed"), done.stderr[-3000:]
    return root


@pytest.mark.parametrize("stage", STAGES)
def test_two_ranks_train_what_one_process_with_twice_the_micro_batch_trains(runs, stage):
    single, ddp = _losses(runs / "single", stage), _losses(runs / "ddp", stage)
    assert len(single) == len(ddp) == 4
    assert ddp == pytest.approx(single, rel=1e-5)
    a, b = _weights(runs / "single", stage), _weights(runs / "ddp", stage)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)
    base = load_file(runs / "base" / "model.safetensors")
    assert any(not torch.equal(a[n], base[n]) for n in base)  # the runs trained something


def test_reference_cache_computed_in_parallel_equals_one_process(runs):
    a = load_file(runs / "single" / "stage2" / "reference_logps.safetensors")
    b = load_file(runs / "ddp" / "stage2" / "reference_logps.safetensors")
    for name in ("chosen", "rejected", "noise"):
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, equal_nan=True, msg=name)


def test_a_run_whose_rank_died_resumes_to_the_same_curve(runs):
    """Killed after step 2 of stage 1 (DDP), resumed and killed again after step 2 of the full
    fine-tune (FSDP2: 2 + 4 + 4 + 2 saves into the resumed run), resumed to the end."""
    killed = runs / "killed"
    assert (killed / "stage1" / "checkpoint").exists() and not (killed / "stage1" / "model").exists()
    again = _launch(runs, "killed", 2, 4, "--resume", "--die-after-save", "12")
    assert again.returncode != 0 and (killed / "control" / "model").exists() and not (killed / "full" / "model").exists()
    done = _launch(runs, "killed", 2, 4, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in STAGES:
        assert _losses(killed, stage) == _losses(runs / "ddp", stage)
        a, b = _weights(runs / "ddp", stage), _weights(killed, stage)
        assert all(torch.equal(a[n], b[n]) for n in a), stage
