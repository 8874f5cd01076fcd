"""Fused linear argmax: ``argmax_v (hidden @ weight.T + bias)[n, v]`` without (N, V) logits.

POVID's stage 2 needs, per response position, the token the model predicts under a noised image;
only its index is used (no gradient). The Triton path streams vocabulary tiles exactly like
``linear_logprob``'s forward, keeping a running (max, index) per row over a (row block, vocabulary
slice) grid, and the slices are merged afterwards. Ties go to the smallest index, as in
``torch.argmax``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import launch, resolve_impl
from ._vocab import StreamConfig, default_stream_config, dot_constexprs, logits_tile, prepare_inputs, vocab_split


@triton.jit
def _linear_argmax_kernel(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    part_max_ptr,
    part_idx_ptr,
    n_rows,
    V,
    D,
    n_splits,
    tiles_per_split,
    stride_h,
    stride_w,
    HAS_BIAS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Per (row block, vocabulary slice s): part_max[n, s] = max_{v in s} logits[n, v], part_idx its v."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    best = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros((BLOCK_N,), dtype=tl.int32)
    first_tile = pid_s * tiles_per_split
    n_tiles = tl.minimum(tiles_per_split, tl.cdiv(V, BLOCK_V) - first_tile)
    for t in range(n_tiles):
        col0 = (first_tile + t) * BLOCK_V
        cols = col0 + tl.arange(0, BLOCK_V)
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
        tile_max, tile_idx = tl.max(logits, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_max > best  # strict: an earlier tile keeps ties
        best = tl.where(better, tile_max, best)
        best_idx = tl.where(better, col0 + tile_idx, best_idx)
    tl.store(part_max_ptr + rows * n_splits + pid_s, best, mask=row_mask)
    tl.store(part_idx_ptr + rows * n_splits + pid_s, best_idx, mask=row_mask)


def _triton_argmax(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: StreamConfig
) -> torch.Tensor:
    """(N,) int64 argmax ids of ``hidden @ weight.T + bias``."""
    (n_rows, dim), vocab = hidden.shape, weight.shape[0]
    n_splits, tiles_per_split = vocab_split(n_rows, vocab, config, hidden.device)
    part_max = torch.empty(n_rows, n_splits, dtype=torch.float32, device=hidden.device)
    part_idx = torch.empty(n_rows, n_splits, dtype=torch.int32, device=hidden.device)
    tiles = config.forward
    launch(
        _linear_argmax_kernel,
        (triton.cdiv(n_rows, tiles.block_n), n_splits),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        hidden_ptr=hidden,
        weight_ptr=weight,
        bias_ptr=bias,
        part_max_ptr=part_max,
        part_idx_ptr=part_idx,
        n_rows=n_rows,
        V=vocab,
        D=dim,
        n_splits=n_splits,
        tiles_per_split=tiles_per_split,
        stride_h=hidden.stride(0),
        stride_w=weight.stride(0),
        HAS_BIAS=bias is not None,
        BLOCK_N=tiles.block_n,
        BLOCK_V=tiles.block_v,
        BLOCK_D=tiles.block_d,
        **dot_constexprs(hidden),
    )
    best_split = part_max.argmax(dim=1, keepdim=True)  # first maximal slice: smallest index on ties
    return part_idx.gather(1, best_split).squeeze(1).long()


def _torch_argmax(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: StreamConfig
) -> torch.Tensor:
    """Same contract as :func:`_triton_argmax`, over row chunks of at most ``chunk_logits`` logits."""
    chunk_rows = max(1, config.chunk_logits // weight.shape[0])
    return torch.cat([F.linear(h, weight, bias).argmax(dim=1) for h in hidden.split(chunk_rows)])


@torch.no_grad()
def linear_argmax(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    config: StreamConfig | None = None,
) -> torch.Tensor:
    """Greedy token ids ``argmax(hidden @ weight.T + bias, -1)`` without (N, V) logits (no grad).

    Args:
        hidden: (N, D) hidden states.
        weight: (V, D) lm_head weight.
        bias: optional (V,) head bias.
        impl: "auto" (Triton for CUDA tensors, torch otherwise), "triton" or "torch".
        config: tile / chunk configuration; None uses :func:`default_stream_config` of the dtype.

    Returns:
        (N,) int64 ids. The Triton path compares fp32-accumulated logits; the torch path compares
        ``F.linear``'s output in the input dtype, so near-ties may resolve differently in bf16.
    """
    hidden, weight, bias = prepare_inputs(hidden, weight, bias)
    cfg = config or default_stream_config(hidden.dtype)
    if resolve_impl(impl, hidden) == "triton" and hidden.shape[0]:
        return _triton_argmax(hidden, weight, bias, cfg)
    return _torch_argmax(hidden, weight, bias, cfg)
