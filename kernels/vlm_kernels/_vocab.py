"""Shared pieces of the ops that stream an ``(N, D) x (V, D)^T`` product over the vocabulary.

``linear_logprob`` and ``linear_argmax`` never materialise the ``(N, V)`` logits: each Triton
program computes ``(BLOCK_N, BLOCK_V)`` logits tiles in registers with :func:`logits_tile` and
reduces them on the spot. This module holds the tile configuration, that helper, the rule that
splits the vocabulary between programs, and the input checks both ops share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._launch import upcast_dot

# Streaming multiprocessor count assumed when the kernels are launched without a GPU (interpreter,
# captured launches): an A100's.
_DEFAULT_SM_COUNT = 108


@dataclass(frozen=True)
class TileConfig:
    """Tile shape and launch options of one streamed-vocabulary Triton kernel."""

    block_n: int
    block_v: int
    block_d: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class StreamConfig:
    """How ``linear_logprob`` / ``linear_argmax`` cut their work.

    Attributes:
        forward: tiles of the forward (log-sum-exp / argmax) kernel.
        backward: tiles of the ``linear_logprob`` backward kernel.
        vocab_splits: vocabulary slices per row block in the forward kernels; None picks enough
            programs to give every streaming multiprocessor about four.
        chunk_logits: torch path: rows per chunk are ``max(1, chunk_logits // V)``, bounding the
            fp32 logits held at once.
    """

    forward: TileConfig
    backward: TileConfig
    vocab_splits: int | None = None
    chunk_logits: int = 1 << 24


def default_stream_config(dtype: torch.dtype) -> StreamConfig:
    """The configuration the dispatcher uses for inputs of ``dtype``.

    Picked from the sm_80 / sm_90 compile (``bench/static_report.py``): the largest tiles that
    compile without register spills on both; not yet timed on a GPU.
    """
    if dtype == torch.float32:
        tiles = TileConfig(block_n=64, block_v=64, block_d=16, num_warps=8, num_stages=2)
        return StreamConfig(forward=tiles, backward=tiles)
    return StreamConfig(
        forward=TileConfig(block_n=64, block_v=128, block_d=64, num_warps=8, num_stages=3),
        backward=TileConfig(block_n=64, block_v=128, block_d=32, num_warps=8, num_stages=2),
    )


def vocab_split(n_rows: int, vocab: int, config: StreamConfig, device: torch.device) -> tuple[int, int]:
    """``(n_splits, tiles_per_split)`` for a forward grid of ``(cdiv(n_rows, block_n), n_splits)``.

    Few rows (only response tokens) would leave most of the GPU idle if each program swept the
    whole vocabulary, so the vocabulary is cut into slices whose partial results are combined
    afterwards. Every slice holds at least one valid tile.
    """
    tiles = config.forward
    n_tiles = triton.cdiv(vocab, tiles.block_v)
    n_splits = config.vocab_splits
    if n_splits is None:
        sm_count = (
            torch.cuda.get_device_properties(device).multi_processor_count
            if device.type == "cuda"
            else _DEFAULT_SM_COUNT
        )
        n_splits = triton.cdiv(4 * sm_count, max(1, triton.cdiv(n_rows, tiles.block_n)))
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(n_splits, n_tiles)))
    return triton.cdiv(n_tiles, tiles_per_split), tiles_per_split


def dot_constexprs(hidden: torch.Tensor) -> dict[str, object]:
    """``UPCAST_DOT`` / ``DOT_PRECISION`` for kernels reading ``hidden``'s dtype.

    fp32 inputs follow torch's own matmul setting: TF32 only under
    ``torch.set_float32_matmul_precision("high")`` or lower, IEEE otherwise.
    """
    precision = "tf32" if torch.get_float32_matmul_precision() != "highest" else "ieee"
    return {"UPCAST_DOT": upcast_dot(hidden), "DOT_PRECISION": precision}


@triton.jit
def logits_tile(
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
    HAS_BIAS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """logits[i, j] = hidden[rows[i]] . weight[cols[j]] + bias[cols[j]]: a (BLOCK_N, BLOCK_V) fp32 tile.

    Accumulated in fp32 over D in BLOCK_D steps; columns with cols >= V hold -inf, masked rows
    read zeros.
    """
    col_mask = cols < V
    offs_d = tl.arange(0, BLOCK_D)
    h_ptrs = hidden_ptr + rows[:, None].to(tl.int64) * stride_h + offs_d[None, :]
    w_ptrs = weight_ptr + cols[None, :].to(tl.int64) * stride_w + offs_d[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_mask = offs_d < D - d0
        h = tl.load(h_ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=d_mask[:, None] & col_mask[None, :], other=0.0)
        if UPCAST_DOT:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
        h_ptrs += BLOCK_D
        w_ptrs += BLOCK_D
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return tl.where(col_mask[None, :], acc, float("-inf"))


def prepare_inputs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Check ``hidden (N, D)``, ``weight (V, D)``, ``bias (V,)`` and bring them to one dtype.

    Under autocast all three are cast to the autocast dtype, as ``F.linear`` would be; otherwise
    they must already share a dtype. The results are contiguous.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden (N, D) and weight (V, D), got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"expected bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError("hidden, weight and bias must share a dtype (or run under autocast)")
    return hidden.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous()
