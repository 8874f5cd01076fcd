"""One preference step, side by side with the trainers users would pick instead (CPU, fp32).

For every benchmark config (``baselines.workload.CONFIGS``: "tiny", the scene world's own model,
and "large", LLaVA-shaped with a 144-token image prefix) and every provider
(``baselines.PROVIDERS``: ours stage 1 / stage 2, TRL's DPOTrainer, TRL-style + Liger's fused DPO
loss, TRL-style full logits, POVID-style stage 2), on the same pairs and the same LoRA policy:

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over a first step (which doubles as the
  warm-up), SDPA forced to its math path (CPU's fused SDPA kernel has no FLOP formula and would
  count 0) and in-place ``addmm_`` counted (TRL's head uses it; see ``flops.flop_counter``);
* time: pytest-benchmark, ``config.rounds`` rounds of one step (forward + backward, grads zeroed
  first) timed with ``time.process_time``: the CPU time of this process, which equals wall time on
  an idle machine with ``OMP_NUM_THREADS=1`` but, unlike wall time, does not count the time other
  jobs on these shared cores take; per pair = best round / pairs (mean and median are in the JSON);
* the loss, checked against ours of the same stage (|diff| <= 1e-4): equal work;
* peak memory: after ``gc`` + ``malloc_trim``, the peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) of one more step minus the resident set before it, in MiB: what the
  step allocates at its peak (activations, logits, gradients), weights excluded;
* and, at real LLaVA-1.5-7B geometry on the meta device (``bench/flops.py``), FLOPs and peak
  activation memory per pair of each provider's step (576 image + 50 prompt tokens, 120-token
  answers, one rejected answer, LoRA r=128).

Run ``pytest bench/bench_step.py --benchmark-only`` (ratio tables at the end), or
``python bench/compare.py`` for the markdown table and ``bench/history.jsonl``.
"""

from __future__ import annotations

import ctypes
import gc
import time
from pathlib import Path

import flops
import pytest
import torch
from baselines import CONFIGS, PROVIDERS, build_workload

LOSS_TOL = 1e-4
META_SIZE = "7b"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_step_mib(step) -> float:
    """Peak resident-set growth of one call of ``step`` (see the module docstring)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    step()
    return (_status_kib("VmHWM") - before) / 1024


@pytest.fixture(scope="session")
def workloads(tmp_path_factory):
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_workload(CONFIGS[name], str(tmp_path_factory.mktemp(f"scenes-{name}")))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def ours_loss(workloads):
    cache = {}

    def get(config: str, stage: int) -> float:
        if (config, stage) not in cache:
            cache[(config, stage)] = float(PROVIDERS[f"ours-s{stage}"].make(workloads(config))())
        return cache[(config, stage)]

    return get


def _group(config: str, stage: int) -> str:
    return f"step {config} stage {stage} (CPU fp32; {CONFIGS[config].describe()})"


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_step(benchmark, bench_report, workloads, ours_loss, config: str, provider: str):
    spec, cfg = PROVIDERS[provider], CONFIGS[config]
    if not spec.installed:
        pytest.skip("pip install -e '.[bench]'")
    if spec.cuda_only:
        pytest.skip("Liger's Triton layer kernels need a GPU (bench/gpu_throughput.py runs them)")
    workload = workloads(config)
    step = spec.make(workload)
    flop_count = flops.count_flops(step)  # also the warm-up
    loss = float(benchmark.pedantic(step, rounds=cfg.rounds, iterations=1, warmup_rounds=0))
    expected = ours_loss(config, spec.stage)
    assert abs(loss - expected) <= LOSS_TOL, f"{provider} loss {loss} != ours {expected}: not the same work"
    peak = peak_step_mib(step)
    stats = benchmark.stats.stats
    row = {"time_per_pair_ms": 1e3 * stats.min / cfg.pairs, "peak_mem_mb": peak,
           "flops_per_pair": flop_count / cfg.pairs}
    benchmark.extra_info.update(kind="cpu-step", config=config, provider=provider, stage=spec.stage,
                                pairs=cfg.pairs, loss=loss, ours=spec.ours, description=spec.description,
                                config_description=cfg.describe(), median_ms_per_pair=1e3 * stats.median / cfg.pairs,
                                threads=torch.get_num_threads(), timer="time.process_time", **row)
    entry = bench_report.setdefault(_group(config, spec.stage), {"baseline": spec.ours, "rows": {}})
    entry["rows"][provider] = row
    del step
    gc.collect()


@pytest.fixture(scope="session")
def meta_model():
    return flops.LayerScaled(flops.llava15_config(META_SIZE))


@pytest.mark.parametrize("provider", list(flops.STEPS))
def test_llava15_per_pair(benchmark, bench_report, meta_model, provider: str):
    """FLOPs and activation memory per pair at LLaVA-1.5-7B geometry (meta device; the time is the count's)."""
    groups = flops.llava_groups()
    count = benchmark.pedantic(meta_model.count, args=(provider, groups), rounds=1, iterations=1)
    ours = flops.PEERS.get(provider, provider)
    stage = 2 if ours == "ours-s2" else 1
    row = {"flops_per_pair": count.flops_per_pair, "peak_mem_mb": count.peak_bytes_per_pair / 2**20}
    benchmark.extra_info.update(kind="meta", config=f"llava-1.5-{META_SIZE} (meta)", provider=provider, ours=ours,
                                pairs=count.pairs, stage=stage, **row,
                                config_description=(f"LLaVA-1.5-{META_SIZE} geometry, bf16, LoRA r=128 dropout 0.05, "
                                                    f"{groups[0].prompt} prompt tokens (576 image), "
                                                    f"{groups[0].chosen}-token answers, GPU paths; "
                                                    f"ours-s1-cached: reference precomputed once for "
                                                    f"{flops.STAGE1_EPOCHS} epochs, amortised"))
    entry = bench_report.setdefault(f"llava-1.5-{META_SIZE} per pair, meta device, stage {stage}",
                                    {"baseline": "ours-s2" if stage == 2 else "ours-s1", "rows": {}})
    entry["rows"][provider] = row
