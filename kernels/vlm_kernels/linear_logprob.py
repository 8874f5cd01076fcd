"""Fused linear log-prob: ``log_softmax(hidden @ weight.T + bias)`` at K targets per row, no logits.

    logp[n, k] = logits[n, t] - logsumexp_v logits[n, v],   t = targets[n, k],
    logits = hidden @ weight.T + bias,

with ``logp[n, k] = 0`` (and no gradient) where ``targets[n, k] < 0``. Rows whose targets are all
ignored (image and prompt tokens) are dropped before any vocabulary work, so only response tokens
cost a pass over the vocabulary.

Triton path: the forward streams vocabulary tiles through ``tl.dot`` and keeps an online
log-sum-exp plus the K target logits in registers, over a (row block, vocabulary slice) grid;
the slices' partial results are merged on the host side of the launch. The backward recomputes each
(row block, vocabulary tile) of logits and turns it into ``d_logits = g * onehot - sum(g) * softmax``
right away, accumulating ``d_hidden`` and ``d_weight`` with fp32 atomics: no ``(N, V)`` buffer.
Torch path (CPU, fallback): the same function over row chunks, recomputing logits in backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ._launch import Impl, launch, resolve_impl
from ._vocab import StreamConfig, default_stream_config, dot_constexprs, logits_tile, prepare_inputs, vocab_split


@triton.jit
def _linear_logprob_forward_kernel(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    targets_ptr,
    rows_ptr,
    part_lse_ptr,
    part_logit_ptr,
    n_rows,
    V,
    D,
    n_splits,
    tiles_per_split,
    stride_h,
    stride_w,
    stride_t,
    K: tl.constexpr,
    K_POW2: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Partial log-sum-exp and target logits of one (row block, vocabulary slice) program.

    For i in the row block, r = rows[i], and slice s = tiles [s*T, (s+1)*T) of BLOCK_V columns:
        part_lse[i, s]      = log sum_{v in s} exp(logits[r, v])
        part_logit[i, s, k] = logits[r, targets[r, k]] if that column lies in s, else 0
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = offs_n < n_rows
    rows = tl.load(rows_ptr + offs_n, mask=row_mask, other=0)
    offs_k = tl.arange(0, K_POW2)
    k_mask = row_mask[:, None] & (offs_k[None, :] < K)
    targets = tl.load(targets_ptr + rows[:, None].to(tl.int64) * stride_t + offs_k[None, :], mask=k_mask, other=-1)

    running_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    target_logits = tl.zeros((BLOCK_N, K_POW2), dtype=tl.float32)
    first_tile = pid_s * tiles_per_split
    n_tiles = tl.minimum(tiles_per_split, tl.cdiv(V, BLOCK_V) - first_tile)
    for t in range(n_tiles):
        cols = (first_tile + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        logits = logits_tile(
            hidden_ptr,
            weight_ptr,
            bias_ptr,
            rows,
            row_mask,
            cols,
            V,
            D,
            stride_h,
            stride_w,
            HAS_BIAS,
            UPCAST_DOT,
            DOT_PRECISION,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
        )
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
        for k in tl.static_range(K):
            target_k = tl.sum(tl.where(offs_k[None, :] == k, targets, 0), axis=1)
            logit_k = tl.sum(tl.where(cols[None, :] == target_k[:, None], logits, 0.0), axis=1)
            target_logits += tl.where(offs_k[None, :] == k, logit_k[:, None], 0.0)

    tl.store(part_lse_ptr + offs_n * n_splits + pid_s, running_max + tl.log(running_sum), mask=row_mask)
    part_logit_ptrs = part_logit_ptr + (offs_n[:, None] * n_splits + pid_s) * K + offs_k[None, :]
    tl.store(part_logit_ptrs, target_logits, mask=k_mask)


@triton.jit
def _linear_logprob_backward_kernel(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    targets_ptr,
    rows_ptr,
    lse_ptr,
    grad_ptr,
    d_hidden_ptr,
    d_weight_ptr,
    d_bias_ptr,
    n_rows,
    V,
    D,
    stride_h,
    stride_w,
    stride_t,
    K: tl.constexpr,
    K_POW2: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    COMPUTE_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradient contribution of one (row block, vocabulary tile), from recomputed logits.

    With r = rows[i] and g = grad (n_rows, K) (already 0 at ignored targets):
        d_logits[i, v] = sum_k g[i, k] * ([v == targets[r, k]] - exp(logits[r, v] - lse[i]))
        d_hidden[r]   += d_logits[i] @ weight[tile]          (fp32 atomics, (N, D))
        d_weight[tile] += d_logits.T @ hidden[rows]          (fp32 atomics, (V, D))
        d_bias[tile]  += sum_i d_logits[i]                   (fp32 atomics, (V,))
    The atomics are relaxed: only their sum matters, so they compile to fire-and-forget reductions.
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = offs_n < n_rows
    rows = tl.load(rows_ptr + offs_n, mask=row_mask, other=0)
    offs_k = tl.arange(0, K_POW2)
    k_mask = row_mask[:, None] & (offs_k[None, :] < K)
    targets = tl.load(targets_ptr + rows[:, None].to(tl.int64) * stride_t + offs_k[None, :], mask=k_mask, other=-1)
    grad = tl.load(grad_ptr + offs_n[:, None] * K + offs_k[None, :], mask=k_mask, other=0.0)
    lse = tl.load(lse_ptr + offs_n, mask=row_mask, other=float("inf"))
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = cols < V

    logits = logits_tile(
        hidden_ptr,
        weight_ptr,
        bias_ptr,
        rows,
        row_mask,
        cols,
        V,
        D,
        stride_h,
        stride_w,
        HAS_BIAS,
        UPCAST_DOT,
        DOT_PRECISION,
        BLOCK_N,
        BLOCK_V,
        BLOCK_D,
    )
    d_logits = -tl.sum(grad, axis=1)[:, None] * tl.exp(logits - lse[:, None])
    for k in tl.static_range(K):
        target_k = tl.sum(tl.where(offs_k[None, :] == k, targets, 0), axis=1)
        grad_k = tl.sum(tl.where(offs_k[None, :] == k, grad, 0.0), axis=1)
        d_logits += tl.where(cols[None, :] == target_k[:, None], grad_k[:, None], 0.0)
    if COMPUTE_DB:
        tl.atomic_add(d_bias_ptr + cols, tl.sum(d_logits, axis=0), mask=col_mask, sem="relaxed")
    if not UPCAST_DOT:
        d_logits = d_logits.to(hidden_ptr.dtype.element_ty)

    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        d_mask = offs_d < D - d0
        if COMPUTE_DH:
            w = tl.load(
                weight_ptr + cols[:, None].to(tl.int64) * stride_w + d0 + offs_d[None, :],
                mask=col_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            if UPCAST_DOT:
                w = w.to(tl.float32)
            d_h = tl.dot(d_logits, w, input_precision=DOT_PRECISION)
            tl.atomic_add(
                d_hidden_ptr + rows[:, None].to(tl.int64) * D + d0 + offs_d[None, :],
                d_h,
                mask=row_mask[:, None] & d_mask[None, :],
                sem="relaxed",
            )
        if COMPUTE_DW:
            h = tl.load(
                hidden_ptr + rows[:, None].to(tl.int64) * stride_h + d0 + offs_d[None, :],
                mask=row_mask[:, None] & d_mask[None, :],
                other=0.0,
            )
            if UPCAST_DOT:
                h = h.to(tl.float32)
            d_w = tl.dot(tl.trans(d_logits), h, input_precision=DOT_PRECISION)
            tl.atomic_add(
                d_weight_ptr + cols[:, None].to(tl.int64) * D + d0 + offs_d[None, :],
                d_w,
                mask=col_mask[:, None] & d_mask[None, :],
                sem="relaxed",
            )


Grads = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def _triton_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    rows: torch.Tensor,
    config: StreamConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logits (R, K) and log-sum-exp (R,), fp32, of the R rows ``hidden[rows]``."""
    (n_rows,), (vocab, dim), k = rows.shape, weight.shape, targets.shape[1]
    n_splits, tiles_per_split = vocab_split(n_rows, vocab, config, hidden.device)
    part_lse = torch.empty(n_rows, n_splits, dtype=torch.float32, device=hidden.device)
    part_logit = torch.empty(n_rows, n_splits, k, dtype=torch.float32, device=hidden.device)
    tiles = config.forward
    launch(
        _linear_logprob_forward_kernel,
        (triton.cdiv(n_rows, tiles.block_n), n_splits),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        hidden_ptr=hidden,
        weight_ptr=weight,
        bias_ptr=bias,
        targets_ptr=targets,
        rows_ptr=rows,
        part_lse_ptr=part_lse,
        part_logit_ptr=part_logit,
        n_rows=n_rows,
        V=vocab,
        D=dim,
        n_splits=n_splits,
        tiles_per_split=tiles_per_split,
        stride_h=hidden.stride(0),
        stride_w=weight.stride(0),
        stride_t=targets.stride(0),
        K=k,
        K_POW2=triton.next_power_of_2(k),
        HAS_BIAS=bias is not None,
        BLOCK_N=tiles.block_n,
        BLOCK_V=tiles.block_v,
        BLOCK_D=tiles.block_d,
        **dot_constexprs(hidden),
    )
    return part_logit.sum(dim=1), torch.logsumexp(part_lse, dim=1)


def _triton_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    rows: torch.Tensor,
    lse: torch.Tensor,
    grad: torch.Tensor,
    needs: tuple[bool, bool, bool],
    config: StreamConfig,
) -> Grads:
    """fp32 gradients (N, D), (V, D), (V,) of ``sum(grad * logp)``; None where not needed."""
    (n_rows,), (vocab, dim), k = rows.shape, weight.shape, targets.shape[1]
    d_hidden, d_weight, d_bias = (
        torch.zeros(t.shape, dtype=torch.float32, device=t.device) if need else None
        for t, need in zip((hidden, weight, bias), needs)
    )
    tiles = config.backward
    launch(
        _linear_logprob_backward_kernel,
        (triton.cdiv(n_rows, tiles.block_n), triton.cdiv(vocab, tiles.block_v)),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        hidden_ptr=hidden,
        weight_ptr=weight,
        bias_ptr=bias,
        targets_ptr=targets,
        rows_ptr=rows,
        lse_ptr=lse,
        grad_ptr=grad,
        d_hidden_ptr=d_hidden,
        d_weight_ptr=d_weight,
        d_bias_ptr=d_bias,
        n_rows=n_rows,
        V=vocab,
        D=dim,
        stride_h=hidden.stride(0),
        stride_w=weight.stride(0),
        stride_t=targets.stride(0),
        K=k,
        K_POW2=triton.next_power_of_2(k),
        HAS_BIAS=bias is not None,
        COMPUTE_DH=d_hidden is not None,
        COMPUTE_DW=d_weight is not None,
        COMPUTE_DB=d_bias is not None,
        BLOCK_N=tiles.block_n,
        BLOCK_V=tiles.block_v,
        BLOCK_D=tiles.block_d,
        **dot_constexprs(hidden),
    )
    return d_hidden, d_weight, d_bias


def _row_chunks(rows: torch.Tensor, vocab: int, config: StreamConfig) -> tuple[torch.Tensor, ...]:
    return rows.split(max(1, config.chunk_logits // vocab))


def _torch_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    rows: torch.Tensor,
    config: StreamConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`_triton_forward`, over row chunks of at most ``chunk_logits`` logits."""
    target_logits, lse = [], []
    for chunk in _row_chunks(rows, weight.shape[0], config):
        logits = F.linear(hidden[chunk], weight, bias).float()  # (R_c, V)
        target_logits.append(logits.gather(1, targets[chunk].clamp(min=0)))
        lse.append(torch.logsumexp(logits, dim=1))
    return torch.cat(target_logits), torch.cat(lse)


def _torch_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    rows: torch.Tensor,
    lse: torch.Tensor,
    grad: torch.Tensor,
    needs: tuple[bool, bool, bool],
    config: StreamConfig,
) -> Grads:
    """Same contract as :func:`_triton_backward`, recomputing each chunk's logits."""
    d_hidden, d_weight, d_bias = (
        torch.zeros(t.shape, dtype=torch.float32, device=t.device) if need else None
        for t, need in zip((hidden, weight, bias), needs)
    )
    start = 0
    for chunk in _row_chunks(rows, weight.shape[0], config):
        sl = slice(start, start + chunk.numel())
        start = sl.stop
        h = hidden[chunk]  # (R_c, D)
        g = grad[sl]  # (R_c, K)
        d_logits = F.linear(h, weight, bias).float().sub_(lse[sl, None]).exp_().mul_(-g.sum(1, keepdim=True))
        d_logits.scatter_add_(1, targets[chunk].clamp(min=0), g)  # ignored targets carry g = 0
        if d_bias is not None:
            d_bias += d_logits.sum(0)
        d_logits = d_logits.to(hidden.dtype)
        if d_hidden is not None:
            d_hidden[chunk] = (d_logits @ weight).float()
        if d_weight is not None:
            d_weight += (d_logits.T @ h).float()
    return d_hidden, d_weight, d_bias


_FORWARD = {"triton": _triton_forward, "torch": _torch_forward}
_BACKWARD = {"triton": _triton_backward, "torch": _torch_backward}


@dataclass(frozen=True)
class LinearLogprobParams:
    """Non-tensor arguments of :class:`LinearLogprobFunction`."""

    impl: Impl
    config: StreamConfig


class LinearLogprobFunction(torch.autograd.Function):
    """Autograd wrapper: ``(hidden, weight, bias, targets, params) -> logp (N, K) fp32``."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        params: LinearLogprobParams,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        valid = targets >= 0  # (N, K)
        if rows is None:
            rows = valid.any(dim=1).nonzero().squeeze(1)  # (R,): rows with at least one target (a host sync)
        logp = torch.zeros(targets.shape, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(0, dtype=torch.float32, device=hidden.device)
        if rows.numel():
            target_logits, lse = _FORWARD[params.impl](hidden, weight, bias, targets, rows, params.config)
            logp[rows] = torch.where(valid[rows], target_logits - lse[:, None], 0.0)
        ctx.save_for_backward(hidden, weight, bias, targets, rows, lse)
        ctx.params = params
        return logp

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_logp: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, rows, lse = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        if not rows.numel():
            grads = tuple(torch.zeros_like(t) if need else None for t, need in zip((hidden, weight, bias), needs))
            return (*grads, None, None, None)
        grad = torch.where(targets[rows] >= 0, grad_logp[rows].float(), 0.0).contiguous()  # (R, K)
        grads = _BACKWARD[ctx.params.impl](hidden, weight, bias, targets, rows, lse, grad, needs, ctx.params.config)
        cast = tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, (hidden, weight, bias)))
        return (*cast, None, None, None)


def linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    config: StreamConfig | None = None,
    rows: torch.Tensor | None = None,
    check_targets: bool = True,
) -> torch.Tensor:
    """Log-probabilities of K target tokens per row under a linear head, without (N, V) logits.

    Args:
        hidden: (N, D) final hidden states (any rows; only rows with a target >= 0 cost work).
        weight: (V, D) output-embedding / lm_head weight (``requires_grad=False`` skips d_weight).
        targets: (N, K) integer token ids in [0, V); negative means "ignore" (logp 0, no gradient).
        bias: optional (V,) head bias.
        impl: "auto" (Triton for CUDA tensors, torch otherwise), "triton" or "torch".
        config: tile / chunk configuration; None uses :func:`default_stream_config` of the dtype.
        rows: optional (R,) long, the rows with at least one target >= 0, in increasing order, when the
            caller knows them (e.g. every row: ``arange(N)``); None finds them with ``nonzero``, which
            reads a device value back (a host sync on CUDA).
        check_targets: raise ValueError unless every target is < V (another host sync on CUDA);
            pass False when the caller has checked them.

    Returns:
        (N, K) float32 ``log_softmax(hidden @ weight.T + bias)[n, targets[n, k]]``, differentiable
        w.r.t. hidden, weight and bias. Under autocast the inputs are cast like ``F.linear``'s.
    """
    hidden, weight, bias = prepare_inputs(hidden, weight, bias)
    if targets.shape[:1] != hidden.shape[:1] or targets.dim() != 2 or targets.dtype.is_floating_point:
        raise ValueError(f"expected integer targets of shape ({hidden.shape[0]}, K), got {tuple(targets.shape)}")
    if check_targets and bool((targets >= weight.shape[0]).any()):
        raise ValueError(f"targets must be < V = {weight.shape[0]}")
    if rows is not None and (rows.dim() != 1 or rows.dtype != torch.long):
        raise ValueError(f"rows must be a 1-D long tensor, got {rows.dtype} {tuple(rows.shape)}")
    backend = resolve_impl(impl, hidden)
    params = LinearLogprobParams(backend, config or default_stream_config(hidden.dtype))
    return LinearLogprobFunction.apply(hidden, weight, bias, targets.long().contiguous(), params, rows)


def linear_logprob_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain-torch ``linear_logprob``: full ``(N, V)`` logits, autograd throughout.

    The test oracle (in float64) and the benchmark baseline. Returns (N, K) in float32, or float64
    for float64 inputs.
    """
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (N, V)
    logp = torch.log_softmax(logits, dim=-1).gather(1, targets.clamp(min=0))  # (N, K)
    return logp.masked_fill(targets < 0, 0.0)
