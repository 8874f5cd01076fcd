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

Images: :class:`StepImages` holds one step's pixel values and computes each model's image features
(tower up to its feature layer, then the projector) once: every forward of the step that shows those
images (policy, reference, noised passes) reuses them while the tower (and projector) are frozen.
The tower's layers after ``vision_feature_layer`` (CLIP's last layer for LLaVA's -2) never run.

Host syncs: nothing here reads a device value back. What the forward needs to know on the host
(placeholder rows, group spans, the largest target) is computed on the CPU copy of the pack when it
is built; ``PackedBatch.to`` keeps one device copy per device, with its attention structures.

Only the rows that predict response tokens reach the LM head, through the fused
``vlm_kernels.linear_logprob``: the (T, V) logits are never materialised.

Shapes: G groups, R responses (all groups, group-major order), T packed rows, N response tokens
(= rows that predict one), I distinct images, D hidden size, V vocabulary.
"""

from __future__ import annotations

import logging
from collections import Counter
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
    FLEX_KWARG,
    GROUPS_KWARG,
    VARLEN_KWARG,
    GroupMasks,
    VarlenPlan,
    enable_packed_attention,
    flex_block_mask,
    group_block_masks,
)

Backend = Literal["auto", "sdpa", "varlen", "flex"]
BACKENDS = ("sdpa", "varlen", "flex")
BACKEND_NAMES = {"sdpa": "torch SDPA, one call per group (boolean masks)",
                 "varlen": "flash-attn flash_attn_varlen_func",
                 "flex": "torch FlexAttention, one block mask over the pack"}
backend_calls: Counter[str] = Counter()  # packed forwards run per backend (read by bench/gpu_check.py)
_logged: set[tuple[str, str]] = set()
logger = logging.getLogger(__name__)


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
    row_group: (T,) long, group of each row; row_response: (T,) long, response of each row (-1 on
        prefix rows): what the FlexAttention block mask reads.

    ``to(device)`` returns one cached copy per device, so the attention structures built for it (per
    group masks, block mask) serve every forward of the step; host-side facts (group spans, placeholder
    rows, largest target) are read off the CPU copy, never off the device.
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
    row_group: torch.Tensor | None = None
    row_response: torch.Tensor | None = None
    max_target: int = -1  # largest token id in ``targets`` (known on the host)
    spans: tuple[tuple[int, int], ...] = ()  # ``group_spans()``, computed when packed
    _group_masks: GroupMasks | None = field(default=None, repr=False, compare=False)
    _block_mask: object | None = field(default=None, repr=False, compare=False)
    _host: PackedBatch | None = field(default=None, repr=False, compare=False)  # the CPU batch this copies
    _copies: dict = field(default_factory=dict, repr=False, compare=False)  # device -> copy (on the host batch)
    _image_rows: dict = field(default_factory=dict, repr=False, compare=False)  # token id -> (S,) rows here

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

    @property
    def host(self) -> PackedBatch:
        """The CPU batch this one was copied from (itself when it is that batch)."""
        return self._host if self._host is not None else self

    def group_spans(self) -> list[tuple[int, int]]:
        """``[start, end)`` of each group (its prefix and all its responses) in the row."""
        if self.spans:
            return list(self.spans)
        starts = self.host.prefix_spans[:, 0].tolist()
        return list(zip(starts, starts[1:] + [self.num_tokens]))

    def response_lengths(self) -> torch.Tensor:
        """(R,) long, tokens per response (eos included)."""
        return self.response_spans[:, 1] - self.response_spans[:, 0]

    def to(self, device: torch.device | str) -> PackedBatch:
        """This batch on ``device``: itself when already there, else the host batch's one cached copy
        for that device (so masks built for it are built once)."""
        device = torch.device(device)
        if self.device == device:
            return self
        host = self.host
        if host.device == device:
            return host
        key = str(device)
        if key not in host._copies:
            tensors = {name: getattr(host, name).to(device, non_blocking=True)
                       for name in ("input_ids", "position_ids", "image_index", "prefix_spans", "response_spans",
                                    "response_group", "logprob_index", "targets", "token_response")}
            rows = {name: None if getattr(host, name) is None else getattr(host, name).to(device, non_blocking=True)
                    for name in ("row_group", "row_response")}
            host._copies[key] = replace(host, **tensors, **rows, varlen=host.varlen.to(device), _group_masks=None,
                                        _block_mask=None, _host=host, _copies={}, _image_rows={})
        return host._copies[key]

    def group_masks(self) -> GroupMasks:
        """The SDPA backend's per-group (L_g, L_g) bool masks, True = may attend; no (T, T) mask exists.

        Built on first use on the host batch (CPU), moved here, then cached: every layer and forward (and
        checkpoint recomputation) reuses them.
        """
        if self._group_masks is None:
            host = self.host
            if host is self:
                self._group_masks = group_block_masks(self.varlen, self.group_spans())
            else:
                masks = host.group_masks()
                self._group_masks = GroupMasks(masks.spans, tuple(m.to(self.device, non_blocking=True)
                                                                  for m in masks.masks))
        return self._group_masks

    def block_mask(self):
        """The FlexAttention backend's ``BlockMask`` over the whole (T, T) pack, built once on this device."""
        if self._block_mask is None:
            if self.row_group is None:
                raise ValueError("this PackedBatch has no row_group / row_response (not made by pack_groups)")
            self._block_mask = flex_block_mask(self.row_group, self.row_response)
        return self._block_mask

    def prepare_attention(self, backend: str) -> PackedBatch:
        """Build now what ``backend`` will read (per-group masks for "sdpa", the block mask for "flex"),
        so the forwards find it ready; returns self."""
        if backend == "sdpa":
            self.group_masks()
        elif backend == "flex":
            self.block_mask()
        return self

    def image_rows(self, image_token_id: int) -> tuple[int, torch.Tensor]:
        """``(S, rows)``: how many image placeholders the row holds (a host int) and their (S,) long
        positions on this batch's device, found on the CPU copy (no device read)."""
        if image_token_id not in self._image_rows:
            host = self.host
            rows = (host.input_ids[0] == image_token_id).nonzero().squeeze(1)
            self._image_rows[image_token_id] = (rows.numel(), rows.to(self.device, non_blocking=True))
        return self._image_rows[image_token_id]


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
    row_group: list[int] = []
    row_response: list[int] = []
    for g, (prompt, group) in enumerate(zip(prompts, responses)):
        if not prompt or not group or not all(group):
            raise ValueError(f"group {g}: the prompt and each of its (>= 1) responses must be non-empty")
        if min(min(r) for r in group) < 0:
            raise ValueError(f"group {g}: response token ids must be >= 0")
        if image_token_id is not None and (image_token_id not in prompt
                                           or any(image_token_id in r for r in group)):
            raise ValueError(f"group {g}: image placeholders must be in the prompt, and only there")
        p0, p1 = len(ids), len(ids) + len(prompt)
        ids += prompt
        positions += range(len(prompt))
        prefix_spans.append((p0, p1))
        row_group += [g] * len(prompt)
        row_response += [-1] * len(prompt)
        for j, response in enumerate(group):
            r0, r1 = len(ids), len(ids) + len(response)
            ids += response
            positions += range(len(prompt), len(prompt) + len(response))
            response_spans.append((r0, r1))
            response_group.append(g)
            row_group += [g] * len(response)
            row_response += [len(response_spans) - 1] * len(response)
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
    starts = [a for a, _ in prefix_spans]
    targets = [t for group in responses for r in group for t in r]
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=long), position_ids=torch.tensor([positions], dtype=long),
        image_index=torch.tensor(image_index, dtype=long), prefix_spans=torch.tensor(prefix_spans, dtype=long),
        response_spans=torch.tensor(response_spans, dtype=long), response_group=torch.tensor(response_group, dtype=long),
        logprob_index=torch.tensor(logprob_index, dtype=long),
        targets=torch.tensor(targets, dtype=long),
        token_response=torch.tensor(token_response, dtype=long), varlen=varlen,
        row_group=torch.tensor(row_group, dtype=long), row_response=torch.tensor(row_response, dtype=long),
        max_target=max(targets), spans=tuple(zip(starts, starts[1:] + [len(ids)])))


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


def choose_backend(llava: LlavaModel, device: torch.device) -> Literal["sdpa", "varlen", "flex"]:
    """The attention backend "auto" takes: on CUDA, "varlen" (FlashAttention-2) with flash-attn installed
    and half-precision compute, else "flex" (FlexAttention, built into torch); "sdpa" off CUDA."""
    if device.type != "cuda":
        return "sdpa"
    if attention.flash_attn_varlen_func is None:
        return "flex"
    half = (torch.float16, torch.bfloat16)
    autocast_half = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in half
    return "varlen" if autocast_half or llava.get_input_embeddings().weight.dtype in half else "flex"


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def tower_features(llava: LlavaModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """(I, P, Dv) the vision tower's ``vision_feature_layer`` hidden states (class token dropped under
    the "default" strategy): what ``get_image_features`` feeds its projector, without running the
    layers after the feature layer (for LLaVA-1.5's -2, CLIP's last layer never runs).

    The tower's own forward runs (its hooks fire) with ``encoder.layers`` cut to the layers the
    feature layer needs, so its ``last_hidden_state`` is that layer's ``hidden_states`` entry. A
    trainable tower (full fine-tune), a tower without an ``encoder.layers`` stack, or a list of
    feature layers run whole, as ``get_image_features`` does (a trainable tower's unused layers keep
    the gradients, zero or none, and optimiser state they always had: results do not move).
    """
    tower = llava.vision_tower
    layer = llava.config.vision_feature_layer
    strategy = llava.config.vision_feature_select_strategy
    pixel_values = pixel_values.to(next(tower.parameters()).dtype)
    encoder = getattr(tower, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if isinstance(layer, int) and isinstance(layers, nn.ModuleList) and _frozen(tower):
        keep = layer % (len(layers) + 1)                     # hidden_states[k] is the output of k layers
        encoder.layers = layers[:keep]
        try:
            hidden = tower(pixel_values, return_dict=True).last_hidden_state   # (I, P + 1, Dv)
        finally:
            encoder.layers = layers
        return hidden[:, 1:] if strategy == "default" else hidden
    states = tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
    pool = [states[k] for k in ([layer] if isinstance(layer, int) else layer)]
    if strategy == "default":
        pool = [h[:, 1:] for h in pool]
    return torch.cat(pool, dim=-1)


class StepImages:
    """One step's images, each model's features computed once and shared by every forward.

    pixel_values: (I, C, H, W). ``features(llava)`` is the (I, P, D) projector output, as
    ``get_image_features`` gives it (tower up to the feature layer, then the projector). With the
    tower frozen its output is computed once per model (without grad) and kept; with the projector
    frozen too, so is the projector's output. A trainable part runs again in each forward that asks
    (with grad where grad is enabled), so no gradient is ever lost. Policy and reference share one
    entry when the reference is the same module with adapters disabled (adapters live in the decoder).
    """

    def __init__(self, pixel_values: torch.Tensor):
        self.pixel_values = pixel_values
        self._tower: dict[int, torch.Tensor] = {}
        self._projected: dict[int, torch.Tensor] = {}
        self.tower_calls = 0  # tower forwards run so far (the tests count them)

    @property
    def device(self) -> torch.device:
        return self.pixel_values.device

    @property
    def num_images(self) -> int:
        return self.pixel_values.shape[0]

    def features(self, llava: LlavaModel) -> torch.Tensor:
        key = id(llava)
        if key in self._projected:
            return self._projected[key]
        tower_frozen = _frozen(llava.vision_tower)
        tower = self._tower.get(key)
        if tower is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not tower_frozen):
                tower = tower_features(llava, self.pixel_values)
            self.tower_calls += 1
            if tower_frozen:
                self._tower[key] = tower
        projector_frozen = tower_frozen and _frozen(llava.multi_modal_projector)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not projector_frozen):
            projected = llava.multi_modal_projector(tower)                   # (I, P, D)
        if projector_frozen:
            self._projected[key] = projected
        return projected


def as_step_images(images: torch.Tensor | StepImages) -> StepImages:
    return images if isinstance(images, StepImages) else StepImages(images)


def packed_hidden_states(model: nn.Module, packed: PackedBatch, pixel_values: torch.Tensor | StepImages,
                         backend: Backend = "auto") -> torch.Tensor:
    """(T, D) final-norm decoder hidden states of the packed row; no LM head is applied.

    pixel_values: (I, C, H, W), the distinct images ``packed.image_index`` points into, or a
    :class:`StepImages` over them, which every forward of a step should share: then the frozen tower
    runs once per image per step, not once per forward. ``backend``: "sdpa" (torch SDPA per group),
    "varlen" (flash-attn), "flex" (FlexAttention) or "auto" (:func:`choose_backend`). Switches the
    decoder to the packed attention implementation (see ``enable_packed_attention``). No host sync.
    """
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto', 'sdpa', 'varlen' or 'flex', got {backend!r}")
    images = as_step_images(pixel_values)
    llava, _ = llava_parts(model)
    enable_packed_attention(llava.language_model)
    device = images.device
    packed = packed.to(device)
    backend = choose_backend(llava, device) if backend == "auto" else backend
    backend_calls[backend] += 1
    if (backend, str(device)) not in _logged:
        _logged.add((backend, str(device)))
        logger.info("packed attention on %s: %s (%s)", device, backend, BACKEND_NAMES[backend])

    features = images.features(llava)                                              # (I, P, D)
    image_embeds = features.index_select(0, packed.image_index).flatten(0, 1)      # (G * P, D)
    embeds = llava.get_input_embeddings()(packed.input_ids)                        # (1, T, D)
    slots, rows = packed.image_rows(llava.config.image_token_id)                   # S, (S,)
    if slots != image_embeds.shape[0]:
        raise ValueError(f"{slots} image placeholders in the pack, but {packed.num_groups} groups x "
                         f"{features.shape[1]} image tokens")
    embeds = embeds.index_copy(1, rows, image_embeds[None].to(embeds.dtype))

    # An (empty) prepared 4-D mask makes transformers skip building its own; the backends ignore it and
    # take the pack's structure from their keyword instead.
    mask = torch.empty(1, 1, 0, 0, dtype=torch.bool, device=device)
    extra = ({VARLEN_KWARG: packed.varlen} if backend == "varlen" else
             {FLEX_KWARG: packed.block_mask()} if backend == "flex" else {GROUPS_KWARG: packed.group_masks()})
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


def response_rows(model: nn.Module, packed: PackedBatch, pixel_values: torch.Tensor | StepImages,
                  backend: Backend = "auto") -> torch.Tensor:
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
    vocab = head.weight.shape[0]
    if packed.max_target >= vocab:  # a host int: the pack's targets were checked when it was built
        raise ValueError(f"targets must be < V = {vocab}, the pack holds token {packed.max_target}")
    targets = packed.targets[:, None]                                              # (N, 1)
    if extra_targets is not None:
        if extra_targets.shape != packed.targets.shape:
            raise ValueError(f"extra_targets {tuple(extra_targets.shape)}, expected {tuple(packed.targets.shape)}")
        extra_targets = extra_targets.to(targets)
        torch._assert_async((extra_targets < vocab).all(), "extra_targets must be < V")  # no host sync on CUDA
        targets = torch.cat([targets, extra_targets[:, None]], dim=1)              # (N, 2)
    # every row has its (>= 0) response token in column 0: all N rows are scored, no nonzero needed.
    # Under autocast linear_logprob casts all operands to the autocast dtype, as the LM head would.
    every_row = torch.arange(targets.shape[0], device=targets.device)
    logprobs = linear_logprob(rows.to(head.weight.dtype), head.weight, targets, bias=head.bias, rows=every_row,
                              check_targets=False)                                 # (N, K) fp32
    sums = logprobs.new_zeros(packed.num_responses, targets.shape[1]).index_add(0, packed.token_response, logprobs)
    lengths = packed.response_lengths()
    if extra_targets is None:
        return ResponseLogprobs(sums[:, 0], logprobs[:, 0], lengths)
    return ResponseLogprobs(sums[:, 0], logprobs[:, 0], lengths, sums[:, 1], logprobs[:, 1])


def packed_response_logprobs(model: nn.Module, packed: PackedBatch, pixel_values: torch.Tensor | StepImages,
                             extra_targets: torch.Tensor | None = None, backend: Backend = "auto") -> ResponseLogprobs:
    """Per-response summed log-probs of a packed batch; differentiable w.r.t. the model.

    pixel_values: (I, C, H, W). extra_targets: optional (N,) long, a second token scored at every
    response position (aligned with ``packed.targets``; < 0 = ignore), e.g. POVID's argmax under the
    noised image. Only the N response-predicting rows meet the LM head, in ``vlm_kernels.linear_logprob``.
    """
    packed = packed.to(pixel_values.device)  # a tensor's or StepImages' device
    return score_response_rows(model, packed, response_rows(model, packed, pixel_values, backend), extra_targets)

