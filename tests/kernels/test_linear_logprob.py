"""linear_logprob against a float64 autograd reference, on both backends (Triton interpreted)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vlm_kernels import StreamConfig, TileConfig, linear_logprob, linear_logprob_reference
from vlm_kernels._launch import capture_launches

N, D, V = 37, 45, 133  # none a multiple of any block size
SMALL = TileConfig(block_n=16, block_v=32, block_d=16, num_warps=4, num_stages=1)
# 5 vocabulary tiles in 2 slices (3 + 2 tiles), 3 row blocks, 3 D steps; torch: 7-row chunks.
CONFIG = StreamConfig(forward=SMALL, backward=SMALL, vocab_splits=2, chunk_logits=7 * V)


def make_inputs(dtype: torch.dtype, k: int, bias: bool, seed: int = 0):
    """hidden (N, D), weight (V, D), targets (N, K), bias (V,) | None; a quarter of rows fully ignored."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, D, generator=g) * 0.5).to(dtype).requires_grad_()
    b = torch.randn(V, generator=g).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (N, k), generator=g)
    targets[::4] = -100  # image / prompt rows: every target ignored
    targets[1::3, 0] = -1  # partially ignored rows when K = 2
    return hidden, weight, targets, b


def run(fn, hidden, weight, targets, bias, grad_out):
    """Output and gradients of ``sum(grad_out * fn(...))`` w.r.t. the inputs that require grad."""
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in (hidden, weight, bias) if t is not None]
    inputs = leaves + [None] * (3 - len(leaves))
    out = fn(inputs[0], inputs[1], targets, inputs[2])
    grads = torch.autograd.grad(out, [t for t in leaves if t.requires_grad], grad_out.to(out.dtype))
    return out, grads


def assert_no_worse_than_eager(name: str, actual: torch.Tensor, eager: torch.Tensor, oracle: torch.Tensor, atol: float):
    """``actual``'s worst error against the fp64 ``oracle`` is at most eager torch's, plus ``atol``."""
    err = (actual.double() - oracle).abs()
    eager_err = (eager.double() - oracle).abs()
    worst, eager_worst = err.argmax(), eager_err.argmax()
    assert err.max() <= eager_err.max() + atol, (
        f"{name}: max error {err.max():.3g} at {divmod(int(worst), oracle.shape[-1])} "
        f"(got {actual.flatten()[worst]:.6g}, want {oracle.flatten()[worst]:.6g}); "
        f"eager's max error {eager_err.max():.3g} at {divmod(int(eager_worst), oracle.shape[-1])}"
    )


CASES = [  # (dtype, K, bias)
    (torch.float32, 1, False),
    (torch.float32, 2, True),
    (torch.bfloat16, 2, False),
    (torch.bfloat16, 1, True),
]
IMPLS = ["torch", "triton"]


def check_matches_float64_reference(impl: str, dtype: torch.dtype, k: int, bias: bool) -> None:
    hidden, weight, targets, b = make_inputs(dtype, k, bias)
    grad_out = torch.randn(N, k, generator=torch.Generator().manual_seed(1))

    out, grads = run(lambda *a: linear_logprob(*a, impl=impl, config=CONFIG), hidden, weight, targets, b, grad_out)
    eager, eager_grads = run(linear_logprob_reference, hidden, weight, targets, b, grad_out)
    as64 = [None if t is None else t.double() for t in (hidden, weight, b)]
    oracle, oracle_grads = run(linear_logprob_reference, as64[0], as64[1], targets, as64[2], grad_out)

    assert out.dtype == torch.float32 and out.shape == (N, k)
    atol = 1e-5 if dtype == torch.float32 else 2e-2
    assert_no_worse_than_eager("logp", out, eager, oracle, atol)
    for name, got, want, ref in zip(("d_hidden", "d_weight", "d_bias"), grads, eager_grads, oracle_grads):
        assert got.dtype == want.dtype
        assert_no_worse_than_eager(name, got, want, ref, atol)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,k,bias", CASES, ids=lambda c: str(c).replace("torch.", ""))
def test_matches_float64_reference(interpreted, impl: str, dtype: torch.dtype, k: int, bias: bool):
    interpreted(check_matches_float64_reference, impl, dtype, k, bias)


def check_ignored_targets(impl: str) -> None:
    hidden, weight, targets, b = make_inputs(torch.float32, 2, bias=True)
    out = linear_logprob(hidden, weight, targets, b, impl=impl, config=CONFIG)
    out.sum().backward()
    assert torch.equal(out[targets < 0], torch.zeros(int((targets < 0).sum())))
    assert (out[targets >= 0] < 0).all()
    fully_ignored = (targets < 0).all(1)
    assert torch.equal(hidden.grad[fully_ignored], torch.zeros_like(hidden.grad[fully_ignored]))

    hidden.grad = weight.grad = b.grad = None
    out = linear_logprob(hidden, weight, torch.full_like(targets, -100), b, impl=impl, config=CONFIG)
    out.sum().backward()
    assert torch.equal(out, torch.zeros(N, 2))
    assert not hidden.grad.any() and not weight.grad.any() and not b.grad.any()


@pytest.mark.parametrize("impl", IMPLS)
def test_ignored_targets_are_exact_zeros(interpreted, impl: str):
    interpreted(check_ignored_targets, impl)


def check_default_config() -> None:
    hidden, weight, targets, _ = make_inputs(torch.bfloat16, 2, bias=False)
    out = linear_logprob(hidden, weight, targets, impl="triton")
    oracle = linear_logprob_reference(hidden.double(), weight.double(), targets)
    torch.testing.assert_close(out.double(), oracle, atol=1e-4, rtol=0)


def test_default_config_matches_reference(interpreted):
    """The dispatcher's own (GPU) tiles, run interpreted: 1 row block, vocabulary in 2 slices."""
    interpreted(check_default_config)


def check_every_partial_is_written() -> None:
    empty = torch.empty
    with mock.patch.object(torch, "empty", lambda *a, **kw: empty(*a, **kw).fill_(float("nan"))):
        hidden, weight, targets, b = make_inputs(torch.float32, 2, bias=True)
        for config in (CONFIG, StreamConfig(SMALL, SMALL, vocab_splits=5)):
            out = linear_logprob(hidden, weight, targets, b, impl="triton", config=config)
            out.sum().backward()
            assert not out.isnan().any() and not hidden.grad.isnan().any() and not weight.grad.isnan().any()


def test_every_partial_result_is_written(interpreted):
    """Buffers the launchers allocate start as NaN: an element no program writes poisons the output."""
    interpreted(check_every_partial_is_written)


def test_frozen_weight_skips_weight_gradient():
    """Captured (not run) launches: the backward kernel is built without its d_weight code."""
    hidden, weight, targets, _ = make_inputs(torch.bfloat16, 2, bias=False)
    weight.requires_grad_(False)
    with capture_launches() as launches:
        linear_logprob(hidden, weight, targets, impl="triton").sum().backward()
    backward = launches[-1].args
    assert (backward["COMPUTE_DH"], backward["COMPUTE_DW"], backward["d_weight_ptr"]) == (True, False, None)
    out = linear_logprob(hidden, weight, targets, impl="torch", config=CONFIG)
    out.sum().backward()
    assert weight.grad is None and hidden.grad is not None


def test_autocast_computes_in_autocast_dtype():
    hidden, weight, targets, _ = make_inputs(torch.float32, 2, bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_logprob(hidden, weight, targets, config=CONFIG)
    out.sum().backward()
    want = linear_logprob_reference(hidden.bfloat16().double(), weight.bfloat16().double(), targets)
    torch.testing.assert_close(out.double(), want, atol=5e-2, rtol=0)
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


def test_rejects_bad_inputs():
    hidden, weight, targets, _ = make_inputs(torch.float32, 1, bias=False)
    with pytest.raises(ValueError, match="< V"):
        linear_logprob(hidden, weight, targets.clamp(min=0) + V)
    with pytest.raises(ValueError, match="dtype"):
        linear_logprob(hidden, weight.double(), targets)
    with pytest.raises(ValueError, match="impl"):
        linear_logprob(hidden, weight, targets, impl="cuda")


@settings(max_examples=25, deadline=None, database=None)
@given(
    n=st.integers(0, 12),
    d=st.integers(1, 9),
    v=st.integers(1, 40),
    k=st.integers(1, 3),
    chunk=st.integers(1, 90),
    seed=st.integers(0, 2**16),
)
def test_torch_path_any_shape(n: int, d: int, v: int, k: int, chunk: int, seed: int):
    """The chunked torch path is the reference function for every shape and chunking.

    float64 inputs, compared at float32 precision: the op accumulates in float32.
    """
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, d, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(-1, v, (n, k), generator=g)
    config = StreamConfig(SMALL, SMALL, chunk_logits=chunk)
    out, grads = run(
        lambda *a: linear_logprob(*a, impl="torch", config=config), hidden, weight, targets, None, torch.ones(n, k)
    )
    want, want_grads = run(linear_logprob_reference, hidden, weight, targets, None, torch.ones(n, k))
    torch.testing.assert_close(out, want.float())
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def check_given_rows(impl: str) -> None:
    """``rows=`` (the caller's valid rows) + ``check_targets=False``: no device read, the same output
    and gradients as finding the rows with ``nonzero``; a superset of the valid rows (``arange(N)``)
    changes only the row chunking (rounding)."""
    hidden, weight, targets, bias = make_inputs(torch.float32, 2, bias=True, seed=3)
    grad_out = torch.randn(N, 2, generator=torch.Generator().manual_seed(4))
    valid = (targets >= 0).any(dim=1).nonzero().squeeze(1)
    default = run(lambda h, w, t, b: linear_logprob(h, w, t, b, impl=impl, config=CONFIG),
                  hidden, weight, targets, bias, grad_out)
    for rows, tol in ((valid, 0.0), (torch.arange(N), 1e-5)):
        given = run(lambda h, w, t, b, rows=rows: linear_logprob(h, w, t, b, impl=impl, config=CONFIG, rows=rows,
                                                      check_targets=False),
                    hidden, weight, targets, bias, grad_out)
        torch.testing.assert_close(given[0], default[0], atol=tol, rtol=0)
        for a, b in zip(given[1], default[1]):
            torch.testing.assert_close(a, b, atol=max(tol, 1e-6), rtol=1e-5)
    with pytest.raises(ValueError, match="rows"):
        linear_logprob(hidden, weight, targets, rows=valid.int())


@pytest.mark.parametrize("impl", IMPLS)
def test_given_rows_skip_the_nonzero_and_change_nothing(interpreted, impl):
    interpreted(check_given_rows, impl)
