"""Packed, prefix-shared forward of preference groups through a LLaVA model: DPO's hot path.

A batch is a list of groups; group g is one prompt prefix ``P_g`` (token ids with its image's
placeholders expanded; exactly one image per group) and ``m_g >= 1`` responses ``R_g1..R_gm`` (token
ids, each ending in eos). All of it becomes ONE row without padding::

    input_ids     [ P_1        | R_11          | R_12          | P_2  | R_21 | ... ]
    position_ids  [ 0..|P_1|-1 | |P_1|..       | |P_1|..       | 0..  | ...        ]

Each response continues the positions of its prefix as if it alone followed it (RoPE sees exactly
the positions of the unpacked sequence ``[P_g | R_gj]``). Prefix rows attend causally within their
prefix; rows of ``R_gj`` attend to all of ``P_g`` and causally to ``R_gj``, never to another response
or group (:mod:`halluremedy.models.attention`). Each prefix, image included, is therefore encoded
once however many responses share it, and the vision tower runs once per distinct image.

Only the rows that predict response tokens reach the LM head, through the fused
``vlm_kernels.linear_logprob``: the (T, V) logits are never materialised.

Shapes: G groups, R responses (all groups, group-major order), T packed rows, N response tokens
(= rows that predict one), I distinct images, D hidden size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaModel
from vlm_kernels.linear_argmax import linear_argmax
from vlm_kernels.linear_logprob import linear_logprob

from halluremedy.models import attention
from halluremedy.models.attention import (
    GROUPS_KWARG,
    VARLEN_KWARG,
    GroupMasks,
    VarlenPlan,
    enable_packed_attention,
    group_block_masks,
)

Backend = Literal["auto", "sdpa", "varlen"]


@dataclass
class PackedBatch:
    """One packed row of preference groups, with everything the attention and the log-probs need.

    input_ids: (1, T) long; position_ids: (1, T) long.
    image_index: (G,) long, image of group g as an index into the forward's ``pixel_values`` (I, C, H, W).
    prefix_spans: (G, 2) long, ``[start, end)`` of each prefix in the row.
    response_spans: (R, 2) long, ``[start, end)`` of each response in the row.
    response_group: (R,) long, group of each response.
    logprob_index: (N,) long, rows whose hidden state predicts a response token: for ``R_gj``, the last
        prefix row of ``P_g``, then the rows of ``R_gj`` but its last.
    targets: (N,) long, the predicted tokens (the responses' ids, concatenated).
    token_response: (N,) long, response of each of those rows.
    varlen: the varlen segments (:class:`VarlenPlan`) the attention backends are built from.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    image_index: torch.Tensor
    prefix_spans: torch.Tensor
    response_spans: torch.Tensor
    response_group: torch.Tensor
    logprob_index: torch.Tensor
    targets: torch.Tensor
    token_response: torch.Tensor
    varlen: VarlenPlan
    _group_masks: GroupMasks | None = field(default=None, repr=False, compare=False)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_groups(self) -> int:
        return self.prefix_spans.shape[0]

    @property
    def num_responses(self) -> int:
        return self.response_spans.shape[0]

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def group_spans(self) -> list[tuple[int, int]]:
        """``[start, end)`` of each group (its prefix and all its responses) in the row."""
        starts = self.prefix_spans[:, 0].tolist()
        return list(zip(starts, starts[1:] + [self.num_tokens]))

    def response_lengths(self) -> torch.Tensor:
        """(R,) long, tokens per response (eos included)."""
        return self.response_spans[:, 1] - self.response_spans[:, 0]

    def to(self, device: torch.device | str) -> PackedBatch:
        """This batch on ``device`` (itself, cached masks included, when it is already there)."""
        if self.device == torch.device(device):
            return self
        tensors = {name: getattr(self, name).to(device, non_blocking=True)
                   for name in ("input_ids", "position_ids", "image_index", "prefix_spans", "response_spans",
                                "response_group", "logprob_index", "targets", "token_response")}
        return replace(self, **tensors, varlen=self.varlen.to(device), _group_masks=None)

    def group_masks(self) -> GroupMasks:
        """The SDPA backend's per-group (L_g, L_g) bool masks, True = may attend; no (T, T) mask exists.

        Built on first use, then cached: every layer and forward (and checkpoint recomputation) reuses them.
        """
        if self._group_masks is None:
            self._group_masks = group_block_masks(self.varlen, self.group_spans())
        return self._group_masks


def pack_groups(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[Sequence[int]]],
                image_index: Sequence[int] | None = None, *, image_token_id: int | None = None) -> PackedBatch:
    """Pack ``G`` groups into one row (on the CPU; move it with :meth:`PackedBatch.to`).

    prompts[g]: ids of ``P_g`` with the image placeholders expanded (e.g.
    ``ConversationEncoder.prompt_ids(question, first=True)``); responses[g]: the ``m_g >= 1`` responses
    of group g (e.g. ``ConversationEncoder.response_ids(answer)``); image_index[g]: which image of the
    forward's ``pixel_values`` group g shows (default: image g). With ``image_token_id``, checks that
    every prefix, and no response, holds placeholders.
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need one response list per prompt, got {len(prompts)} prompts, {len(responses)} lists")
    image_index = list(range(len(prompts))) if image_index is None else list(image_index)
    if len(image_index) != len(prompts):
        raise ValueError(f"{len(image_index)} image indices for {len(prompts)} groups")
    ids: list[int] = []
    positions: list[int] = []
    prefix_spans, response_spans, response_group = [], [], []
    logprob_index: list[int] = []
    token_response: list[int] = []
    kv_index: list[int] = []
    seqlens_q, seqlens_k = [], []
    for g, (prompt, group) in enumerate(zip(prompts, responses)):
        if not prompt or not group or not all(group):
            raise ValueError(f"group {g}: the prompt and each of its (>= 1) responses must be non-empty")
        if image_token_id is not None and (image_token_id not in prompt
                                           or any(image_token_id in r for r in group)):
            raise ValueError(f"group {g}: image placeholders must be in the prompt, and only there")
        p0, p1 = len(ids), len(ids) + len(prompt)
        ids += prompt
        positions += range(len(prompt))
        prefix_spans.append((p0, p1))
        for j, response in enumerate(group):
            r0, r1 = len(ids), len(ids) + len(response)
            ids += response
            positions += range(len(prompt), len(prompt) + len(response))
            response_spans.append((r0, r1))
            response_group.append(g)
            logprob_index += [p1 - 1, *range(r0, r1 - 1)]
            token_response += [len(response_spans) - 1] * len(response)
            # varlen segment: [P_g | R_g1] is one plain causal sequence; R_gj (j > 0) queries [P_g ; R_gj]
            keys = list(range(p0, r1)) if j == 0 else [*range(p0, p1), *range(r0, r1)]
            kv_index += keys
            seqlens_q.append(r1 - (p0 if j == 0 else r0))
            seqlens_k.append(len(keys))
    varlen = VarlenPlan(kv_index=torch.tensor(kv_index, dtype=torch.long),
                        cu_seqlens_q=_cumsum0(seqlens_q), cu_seqlens_k=_cumsum0(seqlens_k),
                        max_seqlen_q=max(seqlens_q), max_seqlen_k=max(seqlens_k))
    long = torch.long
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=long), position_ids=torch.tensor([positions], dtype=long),
        image_index=torch.tensor(image_index, dtype=long), prefix_spans=torch.tensor(prefix_spans, dtype=long),
        response_spans=torch.tensor(response_spans, dtype=long), response_group=torch.tensor(response_group, dtype=long),
        logprob_index=torch.tensor(logprob_index, dtype=long),
        targets=torch.tensor([t for group in responses for r in group for t in r], dtype=long),
        token_response=torch.tensor(token_response, dtype=long), varlen=varlen)


def _cumsum0(lengths: Sequence[int]) -> torch.Tensor:
    """(len + 1,) int32 ``[0, l0, l0 + l1, ...]``, FlashAttention's ``cu_seqlens``."""
    return torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0).to(torch.int32)


def llava_parts(model: nn.Module) -> tuple[LlavaModel, nn.Linear]:
    """The inner ``LlavaModel`` and the LM head of ``model``, found through any wrapper (peft, DDP...)."""
    for module in model.modules():
        if isinstance(module, LlavaForConditionalGeneration):
            head = module.lm_head
            if type(head) is not nn.Linear:
                raise TypeError(f"lm_head is a {type(head).__name__}, not a plain nn.Linear (adapted by peft?): "
                                "packed log-probs read its weight directly")
            return module.model, head
    raise TypeError(f"no LlavaForConditionalGeneration inside {type(model).__name__}")


def choose_backend(llava: LlavaModel, device: torch.device) -> Literal["sdpa", "varlen"]:
    """"varlen" (FlashAttention-2) on CUDA with flash-attn installed and half-precision compute, else "sdpa"."""
    if device.type != "cuda" or attention.flash_attn_varlen_func is None:
        return "sdpa"
    half = (torch.float16, torch.bfloat16)
    autocast_half = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in half
    return "varlen" if autocast_half or llava.get_input_embeddings().weight.dtype in half else "sdpa"


def packed_hidden_states(model: nn.Module, packed: PackedBatch, pixel_values: torch.Tensor,
                         backend: Backend = "auto") -> torch.Tensor:
    """(T, D) final-norm decoder hidden states of the packed row; no LM head is applied.

    pixel_values: (I, C, H, W), the distinct images ``packed.image_index`` points into; the vision
    tower runs once over them. ``backend``: "sdpa" (torch SDPA per group), "varlen" (flash-attn) or "auto".
    Switches the decoder to the packed attention implementation (see ``enable_packed_attention``).
    Move ``packed`` to the device once (``packed.to(device)``) so every forward reuses its SDPA masks.
    """
    if backend not in ("auto", "sdpa", "varlen"):
        raise ValueError(f"backend must be 'auto', 'sdpa' or 'varlen', got {backend!r}")
    llava, _ = llava_parts(model)
    enable_packed_attention(llava.language_model)
    device = pixel_values.device
    packed = packed.to(device)
    backend = choose_backend(llava, device) if backend == "auto" else backend

    vision_dtype = next(llava.vision_tower.parameters()).dtype
    features = llava.get_image_features(pixel_values=pixel_values.to(vision_dtype), return_dict=True).pooler_output
    image_embeds = torch.stack(list(features))[packed.image_index].flatten(0, 1)   # (G * image tokens, D)
    embeds = llava.get_input_embeddings()(packed.input_ids)                        # (1, T, D)
    slots = packed.input_ids == llava.config.image_token_id                        # (1, T)
    if int(slots.sum()) != image_embeds.shape[0]:
        raise ValueError(f"{int(slots.sum())} image placeholders in the pack, but {packed.num_groups} groups x "
                         f"{features[0].shape[0]} image tokens")
    embeds = embeds.masked_scatter(slots[..., None], image_embeds.to(embeds.dtype))

    # An (empty) prepared 4-D mask makes transformers skip building its own; both backends ignore it and
    # take the pack's structure from their keyword instead.
    mask = torch.empty(1, 1, 0, 0, dtype=torch.bool, device=device)
    extra = {VARLEN_KWARG: packed.varlen} if backend == "varlen" else {GROUPS_KWARG: packed.group_masks()}
    out = llava(inputs_embeds=embeds, position_ids=packed.position_ids, attention_mask=mask, use_cache=False,
                **extra)
    return out.last_hidden_state[0]


@dataclass(frozen=True)
class ResponseLogprobs:
    """Log-probabilities of each packed response (R responses, N response tokens).

    summed: (R,) float32, sum over the response's tokens of log p(token | prefix, earlier tokens).
    per_token: (N,) float32, one per response token (``PackedBatch.token_response`` says whose).
    lengths: (R,) long, tokens per response; ``summed / lengths`` is the mean.
    extra_summed, extra_per_token: the same for the optional second target column (ignored
        positions, target < 0, count 0), or None.
    """

    summed: torch.Tensor
    per_token: torch.Tensor
    lengths: torch.Tensor
    extra_summed: torch.Tensor | None = None
    extra_per_token: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        """(R,) float32 per-token average log-probability."""
        return self.summed / self.lengths


def response_rows(model: nn.Module, packed: PackedBatch, pixel_values: torch.Tensor, backend: Backend = "auto"
                  ) -> torch.Tensor:
    """(N, D) hidden states of the rows that predict response tokens (``packed.logprob_index``), in
    the order of ``packed.targets``; ``packed`` must be on ``pixel_values``' device."""
    hidden = packed_hidden_states(model, packed, pixel_values, backend)
    return hidden.index_select(0, packed.logprob_index)


@torch.no_grad()
def rows_argmax(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """(N,) the LM head's argmax token of each (N, D) row (``vlm_kernels.linear_argmax``, no (N, V) logits)."""
    _, head = llava_parts(model)
    return linear_argmax(rows.to(head.weight.dtype), head.weight, head.bias)


def score_response_rows(model: nn.Module, packed: PackedBatch, rows: torch.Tensor,
                        extra_targets: torch.Tensor | None = None) -> ResponseLogprobs:
    """Per-response summed log-probs from :func:`response_rows`' (N, D) rows; see
    :func:`packed_response_logprobs`."""
    _, head = llava_parts(model)
    targets = packed.targets[:, None]                                              # (N, 1)
    if extra_targets is not None:
        if extra_targets.shape != packed.targets.shape:
            raise ValueError(f"extra_targets {tuple(extra_targets.shape)}, expected {tuple(packed.targets.shape)}")
        targets = torch.cat([targets, extra_targets.to(targets)[:, None]], dim=1)  # (N, 2)
    # under autocast linear_logprob casts all operands to the autocast dtype, as the LM head would
    logprobs = linear_logprob(rows.to(head.weight.dtype), head.weight, targets, bias=head.bias)  # (N, K) fp32
    sums = logprobs.new_zeros(packed.num_responses, targets.shape[1]).index_add(0, packed.token_response, logprobs)
    lengths = packed.response_lengths()
    if extra_targets is None:
        return ResponseLogprobs(sums[:, 0], logprobs[:, 0], lengths)
    return ResponseLogprobs(sums[:, 0], logprobs[:, 0], lengths, sums[:, 1], logprobs[:, 1])


def packed_response_logprobs(model: nn.Module, packed: PackedBatch, pixel_values: torch.Tensor,
                             extra_targets: torch.Tensor | None = None, backend: Backend = "auto") -> ResponseLogprobs:
    """Per-response summed log-probs of a packed batch; differentiable w.r.t. the model.

    pixel_values: (I, C, H, W). extra_targets: optional (N,) long, a second token scored at every
    response position (aligned with ``packed.targets``; < 0 = ignore), e.g. POVID's argmax under the
    noised image. Only the N response-predicting rows meet the LM head, in ``vlm_kernels.linear_logprob``.
    """
    packed = packed.to(pixel_values.device)
    return score_response_rows(model, packed, response_rows(model, packed, pixel_values, backend), extra_targets)

