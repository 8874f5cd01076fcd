"""linear_logprob fwd+bwd inside a DPO step, against the usual full-logit implementations (CPU).

Shape: a LLaVA-1.5 DPO step scaled to a 2-core machine: 2 preference pairs (4 sequences) of 512
tokens (image + prompt + response), the last 10% of each sequence being response tokens, hidden
size 256 (LLaVA: 4096), LLaMA's vocabulary V = 32000, float32, trainable lm_head weight. Every
provider computes the same loss -- sigmoid DPO without reference model, beta 0.1, on summed
response log-probs -- and its backward:

* ``torch``: ``log_softmax(h @ W.T)`` over all 2048 positions (what TRL does);
* ``liger``: ``LigerFusedLinearDPOLoss`` (chunks over pairs, full logits of every position of a
  pair; ``compiled=False`` because torch.compile on this CPU costs more than it saves here);
* ``vlm_kernels``: ``linear_logprob(impl="torch")``, the CPU path (response rows only).

Time: pytest-benchmark, 3 rounds after a warm-up. Peak memory: each provider runs in a fresh
subprocess; after a warm-up step and ``malloc_trim``, the peak resident set (``VmHWM``, reset via
``/proc/self/clear_refs``) of one fwd+bwd step minus the resident set before it. It includes the
gradient buffers the step allocates (the 31 MiB weight gradient is common to all).
Run: ``pytest bench/ --benchmark-only``; or ``python bench/bench_linear_logprob.py PROVIDER`` for
one provider's peak in MiB.
"""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from vlm_kernels import linear_logprob, linear_logprob_reference

PAIRS, SEQ, DIM, VOCAB, RESPONSE_FRACTION, BETA = 2, 512, 256, 32000, 0.10, 0.1
IGNORE = -100


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden (2P*T, D), weight (V, D), targets (2P*T,): chosen sequences first, then rejected."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * PAIRS * SEQ
    hidden = torch.randn(rows, DIM, generator=g).requires_grad_()
    weight = (torch.randn(VOCAB, DIM, generator=g) / DIM**0.5).requires_grad_()
    targets = torch.randint(0, VOCAB, (2 * PAIRS, SEQ), generator=g)
    targets[:, : int(SEQ * (1 - RESPONSE_FRACTION))] = IGNORE  # image and prompt positions
    return hidden, weight, targets.view(rows)


def dpo_loss(token_logps: torch.Tensor) -> torch.Tensor:
    """Sigmoid DPO (no reference) from per-position log-probs (2P*T,), 0 at ignored positions."""
    sequence_logps = token_logps.view(2 * PAIRS, SEQ).sum(1)  # (2P,)
    chosen, rejected = sequence_logps[:PAIRS], sequence_logps[PAIRS:]
    return -F.logsigmoid(BETA * (chosen - rejected)).sum() / PAIRS


def _liger_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    loss_fn = LigerFusedLinearDPOLoss(ignore_index=IGNORE, beta=BETA, compiled=False, use_ref_model=False)
    return loss_fn(weight, hidden.view(2 * PAIRS, SEQ, DIM), targets.view(2 * PAIRS, SEQ))[0]


PROVIDERS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "torch": lambda h, w, t: dpo_loss(linear_logprob_reference(h, w, t[:, None])[:, 0]),
    "liger": _liger_loss,
    "vlm_kernels": lambda h, w, t: dpo_loss(linear_logprob(h, w, t[:, None], impl="torch")[:, 0]),
}


def step(provider: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> float:
    """One fwd+bwd of ``provider``'s loss; returns the loss."""
    hidden.grad = weight.grad = None
    loss = PROVIDERS[provider](hidden, weight, targets)
    loss.backward()
    return loss.item()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_step_mib(provider: str) -> float:
    """Peak resident-set growth of one fwd+bwd step, in this process (see module docstring)."""
    batch = make_batch()
    step(provider, *batch)  # warm-up: one-time allocations, thread pools, lazy imports
    batch[0].grad = batch[1].grad = None
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    step(provider, *batch)
    return (_status_kib("VmHWM") - before) / 1024


def measure_peak_mib(provider: str) -> float:
    """:func:`peak_step_mib` in a fresh interpreter, so earlier providers leave no trace."""
    out = subprocess.run([sys.executable, __file__, provider], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


@pytest.fixture(scope="module")
def reference_loss() -> float:
    return step("torch", *make_batch())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_dpo_step_linear_logprob(benchmark, bench_report, reference_loss: float, provider: str):
    batch = make_batch()
    loss = benchmark.pedantic(step, args=(provider, *batch), rounds=3, iterations=1, warmup_rounds=1)
    assert abs(loss - reference_loss) <= 1e-4 * max(1.0, abs(reference_loss)), (loss, reference_loss)
    peak = measure_peak_mib(provider)
    benchmark.extra_info.update(peak_mib=peak, loss=loss)
    entry = bench_report.setdefault(
        "linear_logprob DPO step (CPU, fp32, 4x512 tokens, 10% response, D=256, V=32000)",
        {"baseline": "vlm_kernels", "rows": {}},
    )
    mean = benchmark.stats.stats.mean if benchmark.stats else None
    entry["rows"][provider] = {"time_s": mean, "peak_mib": peak}


if __name__ == "__main__":
    print(f"{peak_step_mib(sys.argv[1]):.1f}")
