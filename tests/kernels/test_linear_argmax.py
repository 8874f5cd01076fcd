"""linear_argmax against float64 logits, on both backends (Triton interpreted)."""

from __future__ import annotations

import pytest
import torch
from vlm_kernels import StreamConfig, TileConfig, linear_argmax

N, D, V = 37, 45, 133
SMALL = TileConfig(block_n=16, block_v=32, block_d=16, num_warps=4, num_stages=1)
CONFIGS = {
    "2 slices": StreamConfig(SMALL, SMALL, vocab_splits=2, chunk_logits=5 * V),
    "1 slice": StreamConfig(SMALL, SMALL, vocab_splits=1, chunk_logits=5 * V),
}


def check_matches_float64(impl: str, dtype: torch.dtype, bias: bool, config: str) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, D, generator=g).to(dtype)
    weight = torch.randn(V, D, generator=g).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    ids = linear_argmax(hidden, weight, b, impl=impl, config=CONFIGS[config])
    logits = hidden.double() @ weight.double().T + (0 if b is None else b.double())  # (N, V)
    assert ids.dtype == torch.int64 and ids.shape == (N,)
    gap = logits.max(1).values - logits.gather(1, ids[:, None]).squeeze(1)
    # Triton compares fp32-accumulated logits: exact up to fp32 rounding; torch's bf16 F.linear output is
    # rounded to bf16, so its pick may be any logit within bf16 rounding of the max.
    tol = 1e-4 if dtype == torch.float32 or impl == "triton" else 0.15
    assert gap.max() <= tol, f"worst pick is {gap.max():.3g} below the max, row {int(gap.argmax())}"
    if dtype == torch.float32:
        assert torch.equal(ids, logits.argmax(1))


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize(
    "dtype,bias,config",
    [(torch.float32, False, "2 slices"), (torch.float32, True, "1 slice"), (torch.bfloat16, True, "2 slices")],
    ids=str,
)
def test_matches_float64(interpreted, impl: str, dtype: torch.dtype, bias: bool, config: str):
    interpreted(check_matches_float64, impl, dtype, bias, config)


def check_ties_and_empty(impl: str) -> None:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(N, D, generator=g)
    weight = torch.randn(V, D, generator=g) * 0.01
    weight[[7, 100, 130]] = hidden[0] * 10  # equal maxima for row 0, in different tiles and slices
    ids = linear_argmax(hidden, weight, impl=impl, config=CONFIGS["2 slices"])
    assert ids[0] == 7
    assert linear_argmax(hidden[:0], weight, impl=impl, config=CONFIGS["2 slices"]).shape == (0,)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_ties_pick_the_smallest_index(interpreted, impl: str):
    interpreted(check_ties_and_empty, impl)
