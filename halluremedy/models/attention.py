"""Prefix-shared attention for packed preference batches, plugged into transformers' attention interface.

A packed row holds, per group, a prompt prefix ``P`` and responses ``R_1..R_m``:
``[P_1 | R_11 | R_12 | P_2 | R_21 | ...]``. Every query row belongs to exactly one *varlen segment*:

* the first response of a group is contiguous with its prefix, so ``[P_g | R_g1]`` is one ordinary
  causal segment (queries = keys = those rows);
* each further response ``R_gj`` is a segment whose queries are its own rows and whose keys are the
  rows of ``P_g`` followed by its own rows.

Causality is aligned bottom-right (FlashAttention-2's convention for ``len_k >= len_q``): query ``i``
of a segment sees keys ``0 .. i + (len_k - len_q)``, so query ``i`` of ``R_gj`` sees all of ``P_g``
and ``R_gj[:i+1]``. One :class:`VarlenPlan` describes the segments; both backends read it:

* ``flash_attn_varlen_func`` (CUDA, fp16/bf16, flash-attn installed): queries are the packed row as
  is; keys/values are gathered with ``kv_index`` so the prefix is repeated once per extra response.
* FlexAttention (CUDA without flash-attn; built into torch, compiled on CUDA): one ``BlockMask``
  over the whole row from each row's group and response (:func:`flex_block_mask`); no key is
  gathered or repeated, and blocks outside every group are skipped;
* SDPA elsewhere, group by group: groups never attend to each other, so :func:`group_block_masks`
  turns the plan into one small (L_g, L_g) boolean mask per group span ``[P_g start, last R_g end)``
  (a :class:`GroupMasks`), and :func:`packed_group_attention` runs torch SDPA on each span's slice
  of q/k/v. Attention work and mask memory are sum_g L_g^2, not T^2; no (T, T) tensor is built
  (:func:`varlen_block_mask`, the whole-row mask, is kept as the reference the tests compare with).

Shapes: T packed rows, Tk gathered key rows (T plus one prefix per extra response), S segments,
G groups, L_g rows of group g, H query heads, Hkv key/value heads, d head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

try:
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None

PACKED_ATTENTION = "halluremedy_packed"
VARLEN_KWARG = "halluremedy_varlen"  # the keyword the pack's VarlenPlan travels under, model -> attention
GROUPS_KWARG = "halluremedy_groups"  # the keyword the pack's GroupMasks travel under (SDPA backend)
FLEX_KWARG = "halluremedy_flex"  # the keyword the pack's FlexAttention BlockMask travels under

VarlenFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class VarlenPlan:
    """Varlen segments of a packed row, in FlashAttention-2's ``cu_seqlens`` form.

    kv_index: (Tk,) long, packed row of each gathered key, segment after segment.
    cu_seqlens_q: (S + 1,) int32, segment starts in the packed row (queries are not reordered).
    cu_seqlens_k: (S + 1,) int32, segment starts in the gathered keys.
    max_seqlen_q, max_seqlen_k: longest segment on each side.
    """

    kv_index: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int

    @property
    def num_segments(self) -> int:
        return self.cu_seqlens_q.numel() - 1

    def to(self, device: torch.device | str) -> VarlenPlan:
        return VarlenPlan(self.kv_index.to(device), self.cu_seqlens_q.to(device), self.cu_seqlens_k.to(device),
                          self.max_seqlen_q, self.max_seqlen_k)


@dataclass(frozen=True)
class GroupMasks:
    """The SDPA backend's view of a packed row: contiguous group spans, each with its own mask.

    spans: ``(start, end)`` per group, in row order; together they cover the row exactly.
    masks: (L_g, L_g) bool per group, True where row ``start + i`` may attend to row ``start + j``.
    """

    spans: tuple[tuple[int, int], ...]
    masks: tuple[torch.Tensor, ...]

    @property
    def lengths(self) -> list[int]:
        return [end - start for start, end in self.spans]


def group_block_masks(plan: VarlenPlan, spans: list[tuple[int, int]]) -> GroupMasks:
    """Each group's (L_g, L_g) block of the pack's attention mask; no (T, T) tensor is built.

    ``spans`` must be contiguous, cover the row, and hold every segment (queries and keys) of the
    plan inside one span, in order; raises ValueError otherwise.
    """
    device = plan.kv_index.device
    if not spans or spans[0][0] != 0 or any(a[1] != b[0] for a, b in zip(spans, spans[1:])) \
            or any(end <= start for start, end in spans):
        raise ValueError(f"group spans must be non-empty, contiguous and start at row 0: {spans}")
    masks = [torch.zeros(end - start, end - start, dtype=torch.bool, device=device) for start, end in spans]
    cu_q, cu_k = plan.cu_seqlens_q.tolist(), plan.cu_seqlens_k.tolist()
    if cu_q[-1] != spans[-1][1]:
        raise ValueError(f"the plan covers {cu_q[-1]} rows, the spans {spans[-1][1]}")
    g = 0
    for s in range(plan.num_segments):
        while cu_q[s] >= spans[g][1]:
            g += 1
        start, end = spans[g]
        len_q, len_k = cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s]
        keys = plan.kv_index[cu_k[s]:cu_k[s + 1]] - start
        if cu_q[s + 1] > end or len_k and (int(keys.min()) < 0 or int(keys.max()) >= end - start):
            raise ValueError(f"segment {s} crosses the boundary of group span {spans[g]}")
        # bottom-right causal: query i sees gathered keys 0 .. i + len_k - len_q
        block = torch.ones(len_q, len_k, dtype=torch.bool, device=device).tril(diagonal=len_k - len_q)
        masks[g][cu_q[s] - start:cu_q[s + 1] - start, keys] = block
    return GroupMasks(tuple((int(a), int(b)) for a, b in spans), tuple(masks))


def varlen_block_mask(plan: VarlenPlan, total: int) -> torch.Tensor:
    """(T, T) bool, True where packed row ``i`` may attend to packed row ``j`` under ``plan``.

    The whole-row reference mask (one span over the row); forwards use :func:`group_block_masks`.
    """
    return group_block_masks(plan, [(0, total)]).masks[0]


def varlen_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                     softmax_scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """Plain-torch ``flash_attn_varlen_func``: same signature and semantics, any device and dtype.

    q: (Tq, H, d); k, v: (Tk, Hkv, d) with H a multiple of Hkv. Returns (Tq, H, d) in q's dtype;
    scores and softmax in fp32 (float64 for float64 inputs). Causal masking is aligned bottom-right, as in FlashAttention >= 2.1.
    The CPU stand-in through which the CUDA path's index construction is tested.
    """
    if dropout_p:
        raise NotImplementedError("varlen_reference has no dropout")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    rep = q.shape[1] // k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    out = torch.empty_like(q)
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for s in range(len(cu_q) - 1):
        qs = q[cu_q[s]:cu_q[s + 1]].transpose(0, 1).to(acc)                                   # (H, lq, d)
        ks = k[cu_k[s]:cu_k[s + 1]].transpose(0, 1).to(acc).repeat_interleave(rep, dim=0)     # (H, lk, d)
        vs = v[cu_k[s]:cu_k[s + 1]].transpose(0, 1).to(acc).repeat_interleave(rep, dim=0)     # (H, lk, d)
        scores = qs @ ks.transpose(1, 2) * scale                                              # (H, lq, lk)
        if causal:
            len_q, len_k = qs.shape[1], ks.shape[1]
            i = torch.arange(len_q, device=q.device)[:, None]
            j = torch.arange(len_k, device=q.device)[None, :]
            scores = scores.masked_fill(j > i + (len_k - len_q), float("-inf"))
        out[cu_q[s]:cu_q[s + 1]] = (scores.softmax(-1) @ vs).transpose(0, 1).to(q.dtype)
    return out


def flash_dtype(query: torch.Tensor) -> torch.dtype | None:
    """The half dtype FlashAttention would run ``query``'s attention in, or None if it cannot.

    Under autocast, RoPE may have promoted q/k to fp32 while the model computes in bf16/fp16: the
    autocast dtype is then used, as transformers' own flash integration does.
    """
    half = (torch.float16, torch.bfloat16)
    if query.dtype in half:
        return query.dtype
    if query.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        return dtype if dtype in half else None
    return None


def packed_varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: VarlenPlan,
                            scaling: float | None, dropout: float = 0.0,
                            varlen_fn: VarlenFn | None = None) -> torch.Tensor:
    """Prefix-shared attention of one packed row through a varlen kernel.

    query: (1, H, T, d); key, value: (1, Hkv, T, d), as transformers hands them over (after RoPE).
    Returns (1, T, H, d), the layout transformers expects back. ``varlen_fn`` defaults to
    ``flash_attn_varlen_func`` (inputs cast to its half dtype); tests pass :func:`varlen_reference`.
    """
    if varlen_fn is None:
        if flash_attn_varlen_func is None:
            raise RuntimeError("the varlen attention backend needs flash-attn (pip install flash-attn)")
        varlen_fn = flash_attn_varlen_func
        dtype = flash_dtype(query)
        if dtype is None:
            raise RuntimeError(f"flash-attn needs CUDA fp16/bf16 activations, got {query.dtype} on {query.device}")
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    q = query[0].transpose(0, 1)                                  # (T, H, d)
    k = key[0].transpose(0, 1).index_select(0, plan.kv_index)     # (Tk, Hkv, d)
    v = value[0].transpose(0, 1).index_select(0, plan.kv_index)   # (Tk, Hkv, d)
    out = varlen_fn(q, k, v, plan.cu_seqlens_q, plan.cu_seqlens_k, plan.max_seqlen_q, plan.max_seqlen_k,
                    dropout_p=dropout, softmax_scale=scaling, causal=True)
    return out.unsqueeze(0)                                       # (1, T, H, d)


def flex_block_mask(row_group: torch.Tensor, row_response: torch.Tensor):
    """FlexAttention ``BlockMask`` of a packed row: row ``q`` may attend to row ``k`` iff both are in
    one group, ``k <= q``, and ``k`` is a prefix row (``row_response[k] < 0``) or a row of ``q``'s own
    response. That is :func:`varlen_block_mask`'s mask, built on the rows' device from two (T,) long
    tensors; fully masked (row block, key block) tiles are skipped by the kernel.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        return (row_group[q] == row_group[k]) & (k <= q) & ((row_response[k] < 0) | (row_response[k] == row_response[q]))

    total = row_group.shape[0]
    return create_block_mask(mask_mod, None, None, total, total, device=row_group.device)


_compiled_flex = None


def _flex_fn(device: torch.device) -> VarlenFn:
    """``flex_attention``: compiled on CUDA (the fused kernel), eager elsewhere (CPU: forward only)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def packed_flex_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_mask,
                          scaling: float | None, dropout: float = 0.0) -> torch.Tensor:
    """Prefix-shared attention of one packed row through FlexAttention and the pack's block mask.

    query: (1, H, T, d); key, value: (1, Hkv, T, d) (GQA handled by the kernel). Returns (1, T, H, d).
    Under autocast q/k/v are brought to one dtype (the autocast dtype when RoPE promoted them).
    """
    if dropout:
        raise NotImplementedError("the FlexAttention backend has no attention dropout")
    dtype = flash_dtype(query) or query.dtype
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    out = _flex_fn(query.device)(query, key, value, block_mask=block_mask, scale=scaling,
                                 enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous()                                 # (1, T, H, d)


def packed_group_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           groups: GroupMasks, dropout: float = 0.0, scaling: float | None = None) -> torch.Tensor:
    """Prefix-shared attention of one packed row through torch SDPA, one call per group span.

    query: (1, H, T, d); key, value: (1, Hkv, T, d). Returns (1, T, H, d), as transformers'
    ``sdpa_attention_forward`` does. GQA, scaling and dropout as there (``repeat_kv`` under a mask).
    """
    key = repeat_kv(key, getattr(module, "num_key_value_groups", 1))
    value = repeat_kv(value, getattr(module, "num_key_value_groups", 1))
    lengths = groups.lengths
    if sum(lengths) != query.shape[2]:
        raise ValueError(f"group spans cover {sum(lengths)} rows, the row has {query.shape[2]}")
    # split, not slicing: its backward concatenates the groups' gradients instead of summing G full-size ones
    outs = [torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                             scale=scaling)
            for q, k, v, mask in zip(query.split(lengths, dim=2), key.split(lengths, dim=2),
                                     value.split(lengths, dim=2), groups.masks)]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()                # (1, T, H, d)


def packed_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """The ``"halluremedy_packed"`` attention function (transformers' AttentionInterface signature).

    With a :class:`VarlenPlan` under ``kwargs[VARLEN_KWARG]``: FlashAttention-2 varlen over the pack.
    With a ``BlockMask`` under ``kwargs[FLEX_KWARG]``: FlexAttention over the whole pack.
    With :class:`GroupMasks` under ``kwargs[GROUPS_KWARG]``: torch SDPA group by group (the packed
    SDPA backend; ``attention_mask`` is then the empty placeholder and ignored).
    Otherwise exactly transformers' SDPA function on the mask the model built or was given (HF's
    causal/padding mask in ordinary calls: ``generate``, plain forwards), which therefore behave as
    under ``attn_implementation="sdpa"``.
    """
    plan = kwargs.pop(VARLEN_KWARG, None)
    groups = kwargs.pop(GROUPS_KWARG, None)
    block_mask = kwargs.pop(FLEX_KWARG, None)
    if plan is not None:
        return packed_varlen_attention(query, key, value, plan, scaling, dropout), None
    if block_mask is not None:
        return packed_flex_attention(query, key, value, block_mask, scaling, dropout), None
    if groups is not None:
        return packed_group_attention(module, query, key, value, groups, dropout, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
# Ordinary (unpacked) calls get SDPA's masks; packed calls pass an empty prepared 4-D mask, so HF builds none.
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def enable_packed_attention(language_model: PreTrainedModel) -> None:
    """Route the decoder's attention through ``"halluremedy_packed"``; idempotent, and left in place.

    The switch is deliberately not scoped to one forward: with gradient checkpointing the backward
    pass re-runs each layer, and it must find the same attention function the forward used.
    Unpacked calls behave as ``"sdpa"``; ``model.set_attn_implementation(...)`` switches back.
    """
    if language_model.config._attn_implementation != PACKED_ATTENTION:
        language_model.set_attn_implementation(PACKED_ATTENTION)
