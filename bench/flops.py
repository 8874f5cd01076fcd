"""FLOPs and activation memory per preference pair at real LLaVA-1.5 geometry, on the meta device.

The model is the real thing without weights: ``LlavaForConditionalGeneration`` built from a
``LlavaConfig`` under ``torch.device("meta")`` (LLaVA-1.5-7B: CLIP ViT-L/14-336, 24 layers x 1024,
577 tokens, feature layer -2; GELU projector 1024 -> 4096 -> 4096; Llama-2-7B decoder, 32 x 4096,
MLP 11008, vocabulary 32064; 13B: 40 x 5120, MLP 13824), LoRA r=128 / alpha 256 / dropout 0.05 on
every decoder linear layer (POVID), reference = adapters disabled, bf16. Each provider's step is
run op by op on it under ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward) and a
live-tensor tracker (:class:`LiveBytes`, peak bytes of tensors the step allocates; weights are not
counted, LoRA gradients are).

Ours is the trainer's own step, :func:`halluremedy.train.dpo.preference_step` on a real
``PreferenceBatch`` of the given lengths (:func:`ours_step`): it reads nothing back from the device,
so it runs on meta as it is, with the packed attention backend forced to what a GPU ("varlen") or
a CPU ("sdpa") would choose, and ``torch.is_autocast_enabled("meta")`` answered (:func:`meta_friendly`;
``vlm_kernels`` asks it, the Triton kernels do the matmul work of their torch path). The peers'
steps are *composed* from the real modules and head functions, for what does not run on meta:

* ``LlavaModel.forward`` checks the image placeholders against the features with ``.item()``: each
  peer step runs ``get_image_features`` (the whole tower) per row and feeds the decoder
  ``inputs_embeds`` of the right shape (the merge is a ``masked_scatter``: no FLOPs);
* ``nonzero`` on meta is told to assume every row is valid (true here: every scored row has a target);
* TRL's ``hidden_states[mask]`` (its CUDA path scores completion rows only) is data-dependent: its
  ``ChunkedLogProbFunction`` is applied to exactly the completion rows;
* Liger's backward compares ``grad_output`` with 1 (``.item()``): it only rescales the gradients its
  forward computed (no matmul), so the decoder's backward is started from ``d_hidden`` directly.

Attention. On a GPU, ours runs FlashAttention-2 varlen over the pack and the padded providers run
a fused SDPA kernel; neither stores the (T, T) scores. The GPU-mode steps here route the
attention through :class:`FlashLike` (``mode="gpu"``): ours through the product's own
``packed_varlen_attention`` (kv gather included) with FlashLike standing in for
``flash_attn_varlen_func``, the padded ones through an attention function registered with
transformers. FlashLike counts ``4 lq lk d`` FLOPs per head forward and twice that backward --
FlopCounterMode's SDPA convention: causal masking not halved, FA2's recomputation not counted --
and keeps q, k, v, out and the log-sum-exp for the backward. ``mode="cpu"`` reproduces what
the CPU runs instead (our per-group SDPA blocks, TRL's all-position head, SDPA math): the test
``tests/bench/test_flops.py`` checks that, in that mode, every step here counts exactly the FLOPs
FlopCounterMode counts on the real CPU steps of ``bench/baselines`` (tiny model, same shapes).

Providers are ``bench/baselines``' (``STEPS``), plus ``ours-s1-cached``: ours with
``--reference precomputed`` (stage 1), i.e. the policy pass per step plus the reference's scoring
forward once per record for the whole stage, amortised over POVID's 3 stage-1 epochs (TRL refuses
to precompute reference log-probs for vision data).

The bound (:func:`bound_flops`): a hand count of the FLOPs a POVID step cannot avoid, in
FlopCounterMode's conventions; ``tests/bench/test_flops.py`` checks that ours counts exactly the
bound plus ``linear_logprob``'s recomputed logits (:func:`head_recompute_flops`), and that at
LLaVA-1.5-7B geometry ours is within 0.5% of it (stage 1 +0.17%, stage 2 +0.11%; before the tower
ran once per image per step and stopped at the feature layer: +1.31% and +1.56%).

Counting is Python-bound on meta tensors, so :class:`LayerScaled` counts shallow copies and
extrapolates (exactly for FLOPs, checked for memory).

Run: ``python bench/flops.py`` (7B and 13B sweeps over response length and responses per prompt:
a markdown table on stdout and ``bench/flops_ratio.png``; about 5 minutes per size on a busy core).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.fx.experimental._config as fx_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode
from transformers import AttentionInterface, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from halluremedy.models import attention as packed_attention
from halluremedy.models import packed as packed_model
from halluremedy.models.attention import VarlenPlan
from halluremedy.models.lora import add_lora
from halluremedy.models.packed import llava_parts
from halluremedy.train.dpo import (
    EncodedRecord,
    PreferenceBatch,
    PreferenceObjective,
    Reference,
    StepLogps,
    make_preference_batch,
    preference_step,
    reference_logps,
)

Mode = Literal["gpu", "cpu"]
IMAGE_TOKENS = 576
PROMPT_TEXT = 50  # "~50 prompt tokens" around the image
RESPONSE = 120  # "~120 response tokens"
TRL_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")  # what DPOTrainer asks its fused head for
TRL_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE
FLASH_LIKE = "bench_fused_sdpa"  # no "flash" in the name: transformers would look for a flash-attn kernel

# ---------------------------------------------------------------- geometry


def llava15_config(size: str = "7b") -> LlavaConfig:
    """LLaVA-1.5-{7b,13b}-hf geometry (no weights are ever loaded)."""
    decoder = {"7b": (4096, 32, 32, 11008), "13b": (5120, 40, 40, 13824)}
    if size not in decoder:
        raise ValueError(f"size must be one of {sorted(decoder)}, got {size!r}")
    hidden, layers, heads, mlp = decoder[size]
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(vocab_size=32064, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                       image_seq_length=IMAGE_TOKENS, projector_hidden_act="gelu",
                       vision_feature_select_strategy="default", vision_feature_layer=-2)


def meta_policy(config: LlavaConfig, lora_r: int = 128, lora_dropout: float = 0.05,
                dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The policy of POVID's recipe on the meta device: LoRA on the decoder, nothing else trainable."""
    with torch.device("meta"):
        # a copy: the steps switch the decoder's attention implementation, which lives in the config
        model = LlavaForConditionalGeneration(copy.deepcopy(config)).to(dtype)
    return add_lora(model, r=lora_r, alpha=2 * lora_r, dropout=lora_dropout).train()


@dataclass(frozen=True)
class Group:
    """One prompt (image placeholders included) with its chosen and rejected response lengths."""

    prompt: int
    chosen: int
    rejected: tuple[int, ...]

    @property
    def pairs(self) -> int:
        return len(self.rejected)


def llava_groups(response: int = RESPONSE, rejected: int = 1, groups: int = 1, prompt_text: int = PROMPT_TEXT,
                 image_tokens: int = IMAGE_TOKENS) -> list[Group]:
    """``groups`` identical prompts of ``image_tokens + prompt_text`` tokens, every response ``response`` long."""
    return [Group(image_tokens + prompt_text, response, (response,) * rejected)] * groups


def num_pairs(groups: Sequence[Group]) -> int:
    return sum(g.pairs for g in groups)


# ---------------------------------------------------------------- measurement


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages allocated while active (views and in-place results excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._sizes:
                continue
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.live)
        return out


@dataclass(frozen=True)
class Count:
    flops: int  # forward + backward, whole step
    peak_bytes: int  # peak live bytes of tensors allocated by the step
    pairs: int

    @property
    def flops_per_pair(self) -> float:
        return self.flops / self.pairs

    @property
    def peak_bytes_per_pair(self) -> float:
        return self.peak_bytes / self.pairs


@contextlib.contextmanager
def meta_friendly() -> Iterator[None]:
    """``nonzero`` assumes every element is nonzero on meta; ``torch.is_autocast_enabled("meta")`` is False
    (it raises otherwise, and TRL's head asks it)."""
    previous_nonzero, previous_autocast = fx_config.meta_nonzero_assume_all_nonzero, torch.is_autocast_enabled

    def is_autocast_enabled(*args):
        return False if args and args[0] == "meta" else previous_autocast(*args)

    fx_config.meta_nonzero_assume_all_nonzero, torch.is_autocast_enabled = True, is_autocast_enabled
    try:
        yield
    finally:
        fx_config.meta_nonzero_assume_all_nonzero, torch.is_autocast_enabled = previous_nonzero, previous_autocast


def _addmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    (m, k), (_, n) = a_shape, b_shape
    return 2 * m * k * n  # as torch's addmm formula: the bias add is not counted


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts the in-place ``addmm_`` (TRL's fused head accumulates its backward
    GEMMs with it; torch's registry only knows the out-of-place op, so it would count 0 for them)."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flop})


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of ``step`` on real tensors (the CPU benchmark), SDPA forced to its countable
    math path (CPU's fused SDPA kernel has no formula in FlopCounterMode and would count 0)."""
    with flop_counter() as flops, sdpa_kernel(SDPBackend.MATH):
        step()
    return flops.get_total_flops()


def count(step: Callable[[], object], pairs: int) -> Count:
    """Run ``step`` once on meta tensors under FlopCounterMode (SDPA math) and LiveBytes."""
    with meta_friendly(), flop_counter() as flops, LiveBytes() as live, sdpa_kernel(SDPBackend.MATH):
        step()
    return Count(flops.get_total_flops(), live.peak, pairs)


# ---------------------------------------------------------------- attention stand-in


class FlashLike(torch.autograd.Function):
    """FlashAttention's cost and memory on meta tensors: out = softmax(q k^T * scale) v, per (batch, head).

    q: (B, H, lq, d), k, v: (B, H, lk, d). Forward: the two score/output matmuls (counted), scores
    freed at once; saved for backward: q, k, v, out and the fp32 log-sum-exp (B, H, lq), as FA2
    keeps them. Backward: dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q (counted); P stands in
    uncounted for FA2's recomputation (meta tensors: only shapes matter).
    """

    @staticmethod
    def forward(ctx, q, k, v):
        if q.device.type != "meta":
            raise RuntimeError("FlashLike models cost on meta tensors; it does not compute attention")
        scores = q @ k.transpose(-1, -2)  # (B, H, lq, lk)
        out = scores.to(v.dtype) @ v
        del scores
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, _out, _lse = ctx.saved_tensors
        p = torch.empty(*q.shape[:-1], k.shape[-2], dtype=q.dtype, device=q.device)  # recomputed, not counted
        grad_v = p.transpose(-1, -2) @ grad_out
        grad_s = grad_out @ v.transpose(-1, -2)
        return grad_s @ k, grad_s.transpose(-1, -2) @ q, grad_v


def flash_like_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                      softmax_scale=None, causal=False):
    """``flash_attn_varlen_func``'s signature over :class:`FlashLike`: q (Tq, H, d), k/v (Tk, H, d)."""
    out = []
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for s in range(len(cu_q) - 1):
        qs = q[cu_q[s]:cu_q[s + 1]].transpose(0, 1)[None]  # (1, H, lq, d)
        rep = q.shape[1] // k.shape[1]  # GQA: FA2 reads the shared key/value heads in place (no FLOPs here either)
        ks = k[cu_k[s]:cu_k[s + 1]].transpose(0, 1)[None].repeat_interleave(rep, dim=1)
        vs = v[cu_k[s]:cu_k[s + 1]].transpose(0, 1)[None].repeat_interleave(rep, dim=1)
        out.append(FlashLike.apply(qs, ks, vs)[0].transpose(0, 1))
    return torch.cat(out)


def flash_like_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature over :class:`FlashLike` (padded batches, causal)."""
    return FlashLike.apply(query, key, value).transpose(1, 2), None


AttentionInterface.register(FLASH_LIKE, flash_like_attention)
AttentionMaskInterface.register(FLASH_LIKE, sdpa_mask)


@contextlib.contextmanager
def varlen_stand_in() -> Iterator[None]:
    previous = packed_attention.flash_attn_varlen_func
    packed_attention.flash_attn_varlen_func = flash_like_varlen
    try:
        yield
    finally:
        packed_attention.flash_attn_varlen_func = previous


# ---------------------------------------------------------------- the steps


def _empty(*shape: int, like: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    p = next(like.parameters())
    return torch.empty(*shape, device=p.device, dtype=dtype or p.dtype)


def _images(policy: torch.nn.Module, n: int) -> torch.Tensor:
    """Vision tower + projector on ``n`` images (no grad flows: both are frozen)."""
    llava, _ = llava_parts(policy)
    size = llava.config.vision_config.image_size
    return llava.get_image_features(pixel_values=_empty(n, 3, size, size, like=llava.vision_tower),
                                    return_dict=True).pooler_output


def _padded_hidden(policy: torch.nn.Module, rows: int, width: int, mode: Mode) -> torch.Tensor:
    """(rows, width, D) hidden states of a right-padded batch, images once per row (HF LLaVA forward)."""
    llava, _ = llava_parts(policy)
    llava.language_model.set_attn_implementation(FLASH_LIKE if mode == "gpu" else "sdpa")
    _images(policy, rows)
    embeds = _empty(rows, width, llava.config.text_config.hidden_size, like=policy)
    # a prepared 4-D mask (HF's own causal + padding mask, as the real batches get): HF then runs no
    # data-dependent checks of its own on it
    mask = torch.empty(rows, 1, width, width, dtype=torch.bool, device=embeds.device)
    return llava(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state


def _meta_batch(policy: torch.nn.Module, groups: Sequence[Group], backend: str) -> PreferenceBatch:
    """The real ``PreferenceBatch`` of ``groups`` (the image placeholders in place, every other token 0),
    on the model's (meta) device with the attention structures of ``backend`` built, as
    ``load_micro_batch`` leaves it. Varlen plans keep ``cu_seqlens`` on the CPU: :class:`FlashLike`
    reads them with ``tolist`` (FA2 takes them on the device; only their values matter here)."""
    llava, _ = llava_parts(policy)
    image_id, image_tokens = llava.config.image_token_id, llava.config.image_seq_length
    records = [EncodedRecord(str(k), [image_id] * image_tokens + [0] * (g.prompt - image_tokens), [0] * g.chosen,
                             [[0] * r for r in g.rejected]) for k, g in enumerate(groups)]
    batch = make_preference_batch(records, list(range(len(groups))), image_id).to(next(policy.parameters()).device)
    for packed in (batch.scored, batch.chosen_only):
        packed.image_rows(image_id)
        packed.prepare_attention(backend)
        if backend == "varlen":
            plan = packed.host.varlen
            packed.varlen = VarlenPlan(plan.kv_index.to(batch.scored.device), plan.cu_seqlens_q, plan.cu_seqlens_k,
                                       plan.max_seqlen_q, plan.max_seqlen_k)
    return batch


@contextlib.contextmanager
def packed_backend(mode: Mode) -> Iterator[str]:
    """The packed attention backend the real step would choose on a GPU ("varlen", FlashAttention-2,
    through :func:`varlen_stand_in`) or a CPU ("sdpa"), forced for meta tensors."""
    backend = "varlen" if mode == "gpu" else "sdpa"
    previous = packed_model.choose_backend
    packed_model.choose_backend = lambda llava, device: backend
    try:
        with varlen_stand_in() if mode == "gpu" else contextlib.nullcontext():
            yield backend
    finally:
        packed_model.choose_backend = previous


def ours_step(policy: torch.nn.Module, groups: Sequence[Group], stage: int, mode: Mode = "gpu",
              reference: Literal["live", "cached", "only"] = "live") -> None:
    """``train_preference``'s micro-step itself (:func:`halluremedy.train.dpo.preference_step`: reference
    -- noised argmax if stage 2, scored --, policy the same with grad, loss), then backward, on meta
    tensors. ``reference="cached"``: the reference's log-probs come from ``precompute_reference``'s
    cache (stage 1), so only the policy runs; ``"only"``: just the reference's scoring forward (what
    the precompute costs per batch, :func:`halluremedy.train.dpo.reference_logps`)."""
    llava, _ = llava_parts(policy)
    size = llava.config.vision_config.image_size
    clean = _empty(len(groups), 3, size, size, like=llava.vision_tower)           # (B, C, H, W)
    noised = torch.empty_like(clean) if stage == 2 else None
    with packed_backend(mode) as backend:
        batch = _meta_batch(policy, groups, backend)
        if reference == "only":
            reference_logps(policy, Reference("adapter"), batch, clean, None)
            return
        ref = None
        if reference == "cached":
            summed = torch.empty(batch.scored.num_responses, dtype=torch.float32, device=clean.device)
            ref = StepLogps(summed, torch.empty(0), None)
        loss, _ = preference_step(policy, Reference("adapter"), PreferenceObjective(stage=stage), batch, clean,
                                  noised, ref)
        loss.backward()


def _pair_rows(groups: Sequence[Group]) -> list[tuple[int, int]]:
    """(prompt, completion) of every row of the 2B batch: chosen rows, then rejected rows."""
    pairs = [(g.prompt, g.chosen, r) for g in groups for r in g.rejected]
    return [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]


def trl_step(policy: torch.nn.Module, groups: Sequence[Group], mode: Mode = "gpu") -> None:
    """TRL 1.16 DPOTrainer: policy (2B, T) forward + fused chunked head, reference the same without
    grad, backward. GPU: completion rows only; CPU: every position (``hidden[:, :-1]``)."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    _, head = llava_parts(policy)
    seqs = _pair_rows(groups)
    width = max(p + c for p, c in seqs)
    n_rows = sum(c for _, c in seqs) if mode == "gpu" else len(seqs) * (width - 1)

    def scored(outputs: tuple[str, ...]) -> torch.Tensor:
        hidden = _padded_hidden(policy, len(seqs), width, mode)[:, :-1].reshape(-1, head.weight.shape[1])
        rows = hidden[:n_rows] if mode == "gpu" else hidden  # the compact path's hidden[mask]
        targets = torch.zeros(n_rows, dtype=torch.long, device=rows.device)
        return ChunkedLogProbFunction.apply(rows, head.weight, head.bias, targets, 1.0, TRL_CHUNK, None, 1.0,
                                            outputs)[0]

    logps = scored(TRL_OUTPUTS)
    with torch.no_grad(), policy.disable_adapter():
        scored(TRL_OUTPUTS)
    logps.sum().backward()


def trl_liger_step(policy: torch.nn.Module, groups: Sequence[Group], mode: Mode = "gpu") -> None:
    """TRL-style 2B batch, decoder hidden states of policy and reference into LigerFusedLinearDPOLoss."""
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    _, head = llava_parts(policy)
    seqs = _pair_rows(groups)
    width = max(p + c for p, c in seqs)
    hidden = _padded_hidden(policy, len(seqs), width, mode)
    with torch.no_grad(), policy.disable_adapter():
        ref_hidden = _padded_hidden(policy, len(seqs), width, mode)
    inputs = hidden[:, :-1]
    targets = torch.zeros(inputs.shape[:2], dtype=torch.long, device=inputs.device)
    LigerFusedLinearDPOLoss(beta=0.1, compiled=False, use_ref_model=True, average_log_prob=False)(
        head.weight, inputs, targets, ref_input=ref_hidden[:, :-1], ref_weight=head.weight)
    # Liger's backward only rescales the d_input its forward computed: start the decoder's backward there.
    inputs.backward(torch.empty_like(inputs))


def _full_logits(policy: torch.nn.Module, rows: int, width: int, mode: Mode) -> torch.Tensor:
    """The HF forward's (rows, width, V) logits (LM head on every position), cast to fp32 as the peers do."""
    _, head = llava_parts(policy)
    return head(_padded_hidden(policy, rows, width, mode)).float()


def trl_full_step(policy: torch.nn.Module, groups: Sequence[Group], mode: Mode = "gpu") -> None:
    """TRL <= 0.2x: full (2B, T, V) logits, log_softmax + gather, for the policy and the reference."""
    seqs = _pair_rows(groups)
    width = max(p + c for p, c in seqs)

    def logps() -> torch.Tensor:
        logits = _full_logits(policy, len(seqs), width, mode)
        index = torch.zeros(len(seqs), width - 1, 1, dtype=torch.long, device=logits.device)
        return logits[:, :-1].log_softmax(-1).gather(2, index).sum()

    loss = logps()
    with torch.no_grad(), policy.disable_adapter():
        logps()
    loss.backward()


def povid_step(policy: torch.nn.Module, groups: Sequence[Group], mode: Mode = "gpu") -> None:
    """POVID stage 2 (``bench/baselines/povid_style.py``): per model three full forwards with full fp32
    logits -- clean [P|y+], noised [P|y+] (argmax only, yet under grad for the policy), clean [P|y-] --
    a log_softmax per scored forward plus a second one of the clean chosen logits for the noise term."""
    pairs = [(g.prompt, g.chosen, r) for g in groups for r in g.rejected]
    n = len(pairs)
    width_c = max(p + c for p, c, _ in pairs)
    width_r = max(p + r for p, _, r in pairs)

    def gathered(logits: torch.Tensor) -> torch.Tensor:
        index = torch.zeros(*logits.shape[:2], 1, dtype=torch.long, device=logits.device)
        return logits[:, :-1].log_softmax(-1).gather(2, index[:, :-1]).sum()

    def multi_forward() -> tuple[torch.Tensor, ...]:
        chosen_logits = _full_logits(policy, n, width_c, mode)
        chosen = gathered(chosen_logits)
        noised_logits = _full_logits(policy, n, width_c, mode)
        rejected_logits = _full_logits(policy, n, width_r, mode)
        rejected = gathered(rejected_logits)
        argmax = noised_logits[:, :-1].max(dim=2).indices
        noise = chosen_logits[:, :-1].log_softmax(-1).gather(2, argmax[..., None]).sum()
        return chosen + rejected + noise, chosen_logits, rejected_logits

    loss, *_keep = multi_forward()
    with torch.no_grad(), policy.disable_adapter():
        multi_forward()
    loss.backward()


STEPS: dict[str, Callable[[torch.nn.Module, Sequence[Group], Mode], None]] = {
    "ours-s1": lambda m, g, mode: ours_step(m, g, 1, mode),
    "trl": trl_step,
    "trl-liger": trl_liger_step,
    "trl-full": trl_full_step,
    "ours-s2": lambda m, g, mode: ours_step(m, g, 2, mode),
    "povid": povid_step,
    # ours with ``--reference precomputed`` (stage 1): the policy pass per step, plus the reference
    # forward once per record for the whole stage (POVID stage 1: 3 epochs), amortised in count_step.
    "ours-s1-cached": lambda m, g, mode: ours_step(m, g, 1, mode, reference="cached"),
}
PEERS = {"trl": "ours-s1", "trl-liger": "ours-s1", "trl-full": "ours-s1", "povid": "ours-s2"}  # peer -> ours
COMPARISONS = [("ours-s1", "trl"), ("ours-s1", "trl-liger"), ("ours-s1", "trl-full"), ("ours-s2", "povid"),
               ("ours-s1-cached", "trl")]
STAGE1_EPOCHS = 3  # POVID stage 1; the cached reference is computed once for all of them


def count_step(policy: torch.nn.Module, provider: str, groups: Sequence[Group], mode: Mode = "gpu") -> Count:
    """FLOPs and peak step memory of ``provider``'s step on ``groups`` (see the module docstring)."""
    policy.zero_grad(set_to_none=True)
    step = count(lambda: STEPS[provider](policy, groups, mode), num_pairs(groups))
    if provider != "ours-s1-cached":
        return step
    precompute = count(lambda: ours_step(policy, groups, 1, mode, reference="only"), num_pairs(groups))
    return Count(step.flops + round(precompute.flops / STAGE1_EPOCHS), max(step.peak_bytes, precompute.peak_bytes),
                 step.pairs)


# ---------------------------------------------------------------- the bound (a hand count)


def _segments(groups: Sequence[Group], chosen_only: bool = False) -> list[tuple[int, int]]:
    """(len_q, len_k) of every attention segment of the prefix-shared pack: ``[P | R_1]`` causal, then
    each further ``R_j`` against ``[P ; R_j]``."""
    out = []
    for g in groups:
        responses = [g.chosen] if chosen_only else [g.chosen, *g.rejected]
        out.append((g.prompt + responses[0], g.prompt + responses[0]))
        out += [(r, g.prompt + r) for r in responses[1:]]
    return out


def bound_flops(config: LlavaConfig, groups: Sequence[Group], stage: int, lora_r: int = 128) -> int:
    """The FLOPs a POVID step on ``groups`` cannot avoid, counted by hand (FlopCounterMode's conventions:
    matmuls, convolutions and attention only, ``2 m n k`` per matmul, attention dense per segment,
    ``4 lq lk d`` per head forward and ``8 lq lk d`` backward, no recomputation).

    What must run: each distinct image once through the frozen tower up to its feature layer (patch
    convolution, ``L_f`` layers over P + 1 tokens) and the frozen projector, per image kind (clean;
    stage 2 also noised); every decoder forward over the prefix-shared pack (prefix encoded once, each
    response attending to its prefix and itself) -- the reference without adapters and without grad,
    the policy with LoRA; the policy's backward: input gradients through every frozen linear (none
    into layer 0's q/k/v, whose input, the embeddings, needs none), the four LoRA matmuls' gradients,
    attention's backward; the LM head on the response-predicting rows only (forward; for the policy
    also ``d_hidden``; the head is frozen), and in stage 2 the argmax head on the y+ rows under the
    noised image, per model. Not in the bound: anything a step could choose to skip, e.g.
    ``linear_logprob``'s recomputed logits in its backward (:func:`head_recompute_flops`).
    """
    v, t = config.vision_config, config.text_config
    dv, fv, lv = v.hidden_size, v.intermediate_size, v.num_hidden_layers
    patches = (v.image_size // v.patch_size) ** 2
    tv = patches + 1
    feature_layers = config.vision_feature_layer % (lv + 1)
    d, f, layers, vocab = t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.vocab_size
    head_dim = getattr(t, "head_dim", None) or d // t.num_attention_heads
    dq, dkv = t.num_attention_heads * head_dim, t.num_key_value_heads * head_dim
    r = lora_r
    images = len(groups) * (2 if stage == 2 else 1)

    tower = (2 * patches * dv * v.num_channels * v.patch_size ** 2
             + feature_layers * (2 * tv * (4 * dv * dv + 2 * dv * fv) + 4 * tv * tv * dv))
    projector = 2 * patches * (dv * d + d * d)
    vision = images * (tower + projector)

    linears = [(d, dq), (d, dkv), (d, dkv), (dq, d), (d, f), (d, f), (f, d)]  # q k v o gate up down (in, out)
    weights = sum(i * o for i, o in linears)
    lora = sum(i + o for i, o in linears) * r
    qkv = d * dq + 2 * d * dkv  # layer 0's q, k, v: their input (the embeddings) needs no gradient

    def forward(tokens: int, segments: list[tuple[int, int]], adapters: bool) -> int:
        attention = sum(4 * lq * lk * dq for lq, lk in segments)
        return layers * (2 * tokens * (weights + (lora if adapters else 0)) + attention)

    def backward(tokens: int, segments: list[tuple[int, int]]) -> int:
        attention = sum(8 * lq * lk * dq for lq, lk in segments)
        base = 2 * tokens * (layers * weights - qkv)               # input gradients through frozen weights
        adapters = 4 * tokens * layers * lora - 2 * tokens * 3 * d * r  # dB, d(Ax), dA, dx (no dx at layer 0 q/k/v)
        return base + adapters + layers * attention

    scored = sum(g.prompt + g.chosen + sum(g.rejected) for g in groups)
    rows = sum(g.chosen + sum(g.rejected) for g in groups)
    head = 2 * rows * d * vocab
    segments = _segments(groups)
    total = vision + forward(scored, segments, False) + head  # reference
    total += forward(scored, segments, True) + head + backward(scored, segments) + head  # policy
    if stage == 2:
        noised = sum(g.prompt + g.chosen for g in groups)
        argmax = 2 * sum(g.chosen for g in groups) * d * vocab
        chosen_segments = _segments(groups, chosen_only=True)
        total += forward(noised, chosen_segments, False) + argmax + forward(noised, chosen_segments, True) + argmax
    return total


def head_recompute_flops(config: LlavaConfig, groups: Sequence[Group]) -> int:
    """``linear_logprob``'s backward recomputes the policy's (rows, V) logits instead of storing them."""
    rows = sum(g.chosen + sum(g.rejected) for g in groups)
    return 2 * rows * config.text_config.hidden_size * config.text_config.vocab_size


def data_parallel(size: str = "7b", gpus: int = 8, global_pairs: int = 16, lora_r: int = 128) -> list[dict]:
    """Per-GPU figures of one POVID optimiser step over ``gpus`` data-parallel ranks (torchrun), stage 1
    and 2, LoRA (DDP) and full fine-tune (FSDP2), at LLaVA-1.5 geometry: each rank's share of the
    bound's FLOPs, the bytes each rank sends per step (ring all-reduce of the LoRA gradients,
    ``2 (N - 1) / N`` of them; FSDP2's all-gather of the parameters in forward and in backward plus the
    reduce-scatter of the gradients, ``3 (N - 1) / N`` of the bf16 model) and the resident training
    state per rank (bf16 weights, bf16 gradients and fp32 AdamW moments of what trains; FSDP2 shards
    all three, DDP replicates them)."""
    config = llava15_config(size)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(copy.deepcopy(config))
    total = sum(p.numel() for p in model.parameters())
    lora = sum(p.numel() for n, p in add_lora(model, r=lora_r, alpha=2 * lora_r, dropout=0.0).named_parameters()
               if "lora_" in n)
    groups = llava_groups()
    per_rank = global_pairs / gpus
    ring = (gpus - 1) / gpus
    rows = []
    for stage in (1, 2):
        flops = bound_flops(config, groups, stage, lora_r) / num_pairs(groups) * per_rank
        for mode, sent, state in (
                ("LoRA, DDP", 2 * ring * lora * 4, total * 2 + lora * (4 + 4 + 8)),  # fp32 adapters, grads, moments
                ("full, FSDP2", 3 * ring * total * 2, total * (2 + 2 + 8) / gpus)):
            rows.append({"size": size, "stage": stage, "mode": mode, "gpus": gpus, "pairs_per_gpu": per_rank,
                         "tflop_per_gpu": flops / 1e12, "gb_sent_per_gpu": sent / 1e9, "gb_state_per_gpu": state / 1e9})
    return rows


class LayerScaled:
    """Counts at full depth from three shallow copies of the model (meta execution is Python-bound).

    Every vision layer and every decoder layer is identical, so FLOPs are exactly affine in the two
    depths: ``c(Lv, Ld) = c(2, 2) + (Lv - 2) [c(3, 2) - c(2, 2)] + (Ld - 2) [c(2, 3) - c(2, 2)]``. The
    peak live bytes are affine as well once the peak falls at the same point of the step at every
    depth (it does from two layers on: the start of the policy's backward); ``tests/bench`` checks
    both against a direct count at depth 4.
    """

    def __init__(self, config: LlavaConfig, lora_r: int = 128, lora_dropout: float = 0.05,
                 dtype: torch.dtype = torch.bfloat16):
        self.depth = (config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers)
        self.models = {}
        for depth in ((2, 2), (3, 2), (2, 3)):
            shallow = copy.deepcopy(config)
            shallow.vision_config.num_hidden_layers, shallow.text_config.num_hidden_layers = depth
            self.models[depth] = meta_policy(shallow, lora_r, lora_dropout, dtype)

    def count(self, provider: str, groups: Sequence[Group], mode: Mode = "gpu") -> Count:
        c = {depth: count_step(model, provider, groups, mode) for depth, model in self.models.items()}
        (lv, ld), base = self.depth, c[(2, 2)]

        def extrapolate(field: str) -> int:
            b = getattr(base, field)
            return b + (lv - 2) * (getattr(c[(3, 2)], field) - b) + (ld - 2) * (getattr(c[(2, 3)], field) - b)

        return Count(extrapolate("flops"), extrapolate("peak_bytes"), base.pairs)


# ---------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class Row:
    size: str
    response: int
    rejected: int
    provider: str
    flops_per_pair: float
    peak_gib_per_pair: float


def sweep(size: str, responses: Sequence[int], rejected: Sequence[int], providers: Sequence[str] = tuple(STEPS),
          progress: bool = True) -> list[Row]:
    """Counts along response length (one rejected) and along responses per prompt (``RESPONSE`` tokens)."""
    model = LayerScaled(llava15_config(size))
    points = [(r, 1) for r in responses] + [(RESPONSE, k) for k in rejected if k != 1 or RESPONSE not in responses]
    rows = []
    for response, k in points:
        for provider in providers:
            c = model.count(provider, llava_groups(response=response, rejected=k))
            rows.append(Row(size, response, k, provider, c.flops_per_pair, c.peak_bytes_per_pair / 2**30))
            if progress:
                print(f"  {size} response={response} rejected={k} {provider}: {c.flops_per_pair / 1e12:.2f} TFLOP/pair, "
                      f"{c.peak_bytes_per_pair / 2**30:.2f} GiB/pair", file=sys.stderr)
    return rows


def ratios(rows: Sequence[Row]) -> list[dict]:
    """ours / peer for FLOPs and memory at every point (:data:`COMPARISONS`)."""
    by = {(r.size, r.response, r.rejected, r.provider): r for r in rows}
    out = []
    for size, response, k in dict.fromkeys((r.size, r.response, r.rejected) for r in rows):
        for ours, peer in COMPARISONS:
            if (size, response, k, ours) in by and (size, response, k, peer) in by:
                a, b = by[(size, response, k, ours)], by[(size, response, k, peer)]
                out.append({"size": size, "response": response, "rejected": k, "ours": ours, "peer": peer,
                            "flops": a.flops_per_pair / b.flops_per_pair,
                            "memory": a.peak_gib_per_pair / b.peak_gib_per_pair})
    return out


PLOTTED = [("ours-s1", "trl"), ("ours-s1", "trl-liger"), ("ours-s2", "povid"), ("ours-s1-cached", "trl")]


def plot(rows: Sequence[Row], path: str | Path) -> None:
    """ours / peer per pair: FLOPs (solid) and activation memory (dashed), vs response length and vs k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = ratios(rows)
    sizes = sorted({r["size"] for r in table}, key=lambda size: float(size.rstrip("b")))
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 3.6 * len(sizes) + 0.8), squeeze=False)
    colors = dict(zip(PLOTTED, ("tab:blue", "tab:orange", "tab:red", "tab:purple")))
    panels = (("response", ("rejected", 1), "response tokens (one rejected answer)"),
              ("rejected", ("response", RESPONSE), f"rejected answers per prompt ({RESPONSE} tokens each)"))
    for i, size in enumerate(sizes):
        for j, (axis, (key, value), label) in enumerate(panels):
            ax = axes[i][j]
            for ours, peer in PLOTTED:
                pts = sorted((r[axis], r["flops"], r["memory"]) for r in table if r["size"] == size
                             and (r["ours"], r["peer"]) == (ours, peer) and r[key] == value)
                if len(pts) < 2:
                    continue
                xs = [p[0] for p in pts]
                ax.plot(xs, [p[1] for p in pts], marker="o", color=colors[(ours, peer)],
                        label=f"FLOPs {ours} / {peer}")
                if ours != "ours-s1-cached":  # same activation memory as ours-s1
                    ax.plot(xs, [p[2] for p in pts], ls="--", marker="x", color=colors[(ours, peer)],
                            label=f"activation memory {ours} / {peer}")
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.set_ylim(0, 1.0)
            ax.set_xlabel(label)
            ax.set_ylabel("ours / peer, per pair")
            ax.set_title(f"LLaVA-1.5-{size}: 576 image + {PROMPT_TEXT} prompt tokens, LoRA r=128", fontsize=10)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if len(sizes) > 1 else 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["7b", "13b"])
    parser.add_argument("--responses", nargs="+", type=int, default=[30, 60, 120, 240, 480])
    parser.add_argument("--rejected", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--png", default=str(Path(__file__).with_name("flops_ratio.png")))
    parser.add_argument("--json", default=str(Path(__file__).with_name("flops_sweep.json")),
                        help="write the counted rows here")
    parser.add_argument("--from-json", help="plot and tabulate rows written earlier instead of counting")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = [Row(**r) for r in json.loads(Path(args.from_json).read_text())]
    else:
        rows = [row for size in args.sizes for row in sweep(size, args.responses, args.rejected)]
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    print("| size | response | rejected | ours | peer | FLOPs ours/peer | memory ours/peer |")
    print("| --- | ---: | ---: | --- | --- | ---: | ---: |")
    for r in ratios(rows):
        print(f"| {r['size']} | {r['response']} | {r['rejected']} | {r['ours']} | {r['peer']} | {r['flops']:.3f} | "
              f"{r['memory']:.3f} |")
    print()
    print("| size | provider | TFLOP/pair | bound TFLOP/pair | over the bound |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        if r.provider in ("ours-s1", "ours-s2") and (r.response, r.rejected) == (RESPONSE, 1):
            bound = bound_flops(llava15_config(r.size), llava_groups(), int(r.provider[-1])) / num_pairs(llava_groups())
            print(f"| {r.size} | {r.provider} | {r.flops_per_pair / 1e12:.3f} | {bound / 1e12:.3f} | "
                  f"{r.flops_per_pair / bound - 1:+.2%} |")
    print()
    print("| size | stage | mode | GPUs | pairs/GPU | TFLOP/GPU/step (bound) | GB sent/GPU/step | GB training state/GPU |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in data_parallel():
        print(f"| {r['size']} | {r['stage']} | {r['mode']} | {r['gpus']} | {r['pairs_per_gpu']:g} | "
              f"{r['tflop_per_gpu']:.1f} | {r['gb_sent_per_gpu']:.2f} | {r['gb_state_per_gpu']:.1f} |")
    plot(rows, args.png)
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
