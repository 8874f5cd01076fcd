"""The packed, prefix-shared forward computes exactly what separate unpacked forwards compute.

Oracle: for each response R_gj, a standard ``model(input_ids=[P_g | R_gj], pixel_values=image)``
under transformers' own SDPA, its logits log-softmaxed in float64 and gathered at the response
tokens. Tolerances: fp32 packed vs that oracle 1e-5 absolute on per-response sums (the measured
worst is ~4e-6 on sums of -7..-49, gradients ~1e-6 relative); float64 packed vs float64 unpacked hidden states 1e-12.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from halluremedy.data.conversation import ConversationEncoder
from halluremedy.models import attention
from halluremedy.models.attention import (
    PACKED_ATTENTION,
    VarlenPlan,
    group_block_masks,
    packed_group_attention,
    packed_varlen_attention,
    varlen_block_mask,
    varlen_reference,
)
from halluremedy.models.llava import TinyLlavaSpec, build_tiny_llava
from halluremedy.models.packed import pack_groups, packed_hidden_states, packed_response_logprobs
from halluremedy.prompts import prompt_words

TEXTS = prompt_words() + ["a red circle and two blue squares.", "yes", "no", "Is there a circle in the image?"]
QUESTIONS = ["Describe this image.", "Is there a circle in the image?", "Please describe this image in detail."]
ANSWERS = [["a red circle and two blue squares."],
           ["yes", "no a blue circle"],
           ["two red squares.", "no", "a blue circle and a red square and two blue circles."]]


def tiny_model(seed: int, kv_heads: int | None = None) -> tuple[LlavaForConditionalGeneration, ConversationEncoder]:
    """A random tiny LLaVA in eval mode; ``kv_heads`` < 4 rebuilds its decoder with grouped-query attention."""
    model, processor = build_tiny_llava(TinyLlavaSpec(), TEXTS, seed=seed)
    if kv_heads is not None:
        config = copy.deepcopy(model.config)
        config.text_config.num_key_value_heads = kv_heads
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.eval()
    return model, ConversationEncoder(processor.tokenizer, model.config.image_seq_length)


@pytest.fixture(scope="module")
def mha():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def gqa():
    model, enc = tiny_model(seed=1, kv_heads=2)
    assert model.model.language_model.layers[0].self_attn.num_key_value_groups == 2
    return model, enc


def groups(enc: ConversationEncoder) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Three groups with 1, 2 and 3 responses; prompts and responses of different lengths."""
    prompts = [enc.prompt_ids(q, first=True) for q in QUESTIONS]
    responses = [[enc.response_ids(a) for a in answers] for answers in ANSWERS]
    assert len({len(p) for p in prompts}) == 3 and len({len(r) for r in responses[2]}) == 3
    return prompts, responses


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def unpacked_logprobs(model, prompts, responses, pixel_values, image_index=None) -> torch.Tensor:
    """(R,) float64 oracle: one standard forward per [P_g | R_gj], transformers' SDPA, log-softmax in float64."""
    model.set_attn_implementation("sdpa")
    image_index = range(len(prompts)) if image_index is None else image_index
    sums = []
    for prompt, group, i in zip(prompts, responses, image_index):
        for response in group:
            ids = torch.tensor([prompt + response])
            logits = model(input_ids=ids, pixel_values=pixel_values[i:i + 1]).logits[0]        # (L, V)
            logp = logits.double().log_softmax(-1)[len(prompt) - 1:-1]                         # (|R|, V)
            sums.append(logp.gather(1, torch.tensor(response)[:, None]).sum())
    return torch.stack(sums)


def param_grads(model, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].grad.clone() for n in names}


GRAD_PARAMS = ["model.language_model.layers.0.self_attn.q_proj.weight",
               "model.language_model.layers.2.self_attn.k_proj.weight",
               "model.language_model.layers.1.mlp.down_proj.weight",
               "model.multi_modal_projector.linear_1.weight",
               "model.vision_tower.encoder.layers.0.self_attn.v_proj.weight",
               "lm_head.weight"]


# ---------------------------------------------------------------------------------------------
# packing and the mask, by hand


def hand_pack():
    """P1 = 3 tokens with responses of 2 and 1 tokens; P2 = 2 tokens with one of 2 tokens."""
    return pack_groups([[10, 11, 12], [20, 21]], [[[13, 14], [15]], [[22, 23]]])


def test_hand_built_pack_layout():
    p = hand_pack()
    assert p.input_ids.tolist() == [[10, 11, 12, 13, 14, 15, 20, 21, 22, 23]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 2, 3]]
    assert p.prefix_spans.tolist() == [[0, 3], [6, 8]]
    assert p.response_spans.tolist() == [[3, 5], [5, 6], [8, 10]]
    assert p.response_group.tolist() == [0, 0, 1]
    assert p.image_index.tolist() == [0, 1]
    # rows predicting each response token: the last prefix row, then the response's rows but its last
    assert p.logprob_index.tolist() == [2, 3, 2, 7, 8]
    assert p.targets.tolist() == [13, 14, 15, 22, 23]
    assert p.token_response.tolist() == [0, 0, 1, 2, 2]
    assert p.response_lengths().tolist() == [2, 1, 2]
    # varlen segments: [P1 | R11], R12 against [P1 ; R12], [P2 | R21]
    assert p.varlen.cu_seqlens_q.tolist() == [0, 5, 6, 10]
    assert p.varlen.cu_seqlens_k.tolist() == [0, 5, 9, 13]
    assert p.varlen.kv_index.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 7, 8, 9]
    assert (p.varlen.max_seqlen_q, p.varlen.max_seqlen_k) == (5, 5)
    assert p.varlen.cu_seqlens_q.dtype == p.varlen.cu_seqlens_k.dtype == torch.int32
    assert p.to("cpu") is p
    moved = p.to("meta")
    assert moved.targets.device.type == moved.varlen.kv_index.device.type == "meta" and p.device.type == "cpu"


def test_hand_built_block_mask():
    expected = torch.tensor([
        # P1 P1 P1 R11 R11 R12 P2 P2 R21 R21
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # P1
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # P1
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # P1
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],  # R11
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],  # R11
        [1, 1, 1, 0, 0, 1, 0, 0, 0, 0],  # R12: its prefix and itself, not R11
        [0, 0, 0, 0, 0, 0, 1, 0, 0, 0],  # P2: nothing of group 1
        [0, 0, 0, 0, 0, 0, 1, 1, 0, 0],  # P2
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 0],  # R21
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1],  # R21
    ], dtype=torch.bool)
    p = hand_pack()
    assert torch.equal(varlen_block_mask(p.varlen, 10), expected)  # the whole-row reference mask
    # the SDPA backend only ever holds the diagonal blocks: groups never attend to each other
    groups = p.group_masks()
    assert p.group_spans() == [(0, 6), (6, 10)] and groups.spans == ((0, 6), (6, 10))
    assert [m.shape for m in groups.masks] == [(6, 6), (4, 4)] and groups.masks[0].dtype == torch.bool
    assert torch.equal(groups.masks[0], expected[:6, :6]) and torch.equal(groups.masks[1], expected[6:, 6:])
    assert not expected[:6, 6:].any() and not expected[6:, :6].any()
    assert p.group_masks() is groups  # built once, reused by every layer and forward


def test_group_masks_reject_spans_that_cut_a_segment():
    p = hand_pack()
    with pytest.raises(ValueError, match="crosses"):
        group_block_masks(p.varlen, [(0, 5), (5, 10)])  # R12 attends to P1 across the cut
    with pytest.raises(ValueError, match="contiguous"):
        group_block_masks(p.varlen, [(0, 6), (7, 10)])
    with pytest.raises(ValueError, match="covers"):
        group_block_masks(p.varlen, [(0, 6), (6, 9)])


def test_pack_rejects_bad_groups():
    with pytest.raises(ValueError, match="non-empty"):
        pack_groups([[1, 2]], [[[3], []]])
    with pytest.raises(ValueError, match="non-empty"):
        pack_groups([[1, 2]], [[]])
    with pytest.raises(ValueError, match="placeholders"):
        pack_groups([[1, 2]], [[[3, 4]]], image_token_id=4)  # image token in a response
    with pytest.raises(ValueError, match="placeholders"):
        pack_groups([[1, 2]], [[[3]]], image_token_id=4)  # no image in the prompt
    with pytest.raises(ValueError, match="image indices"):
        pack_groups([[1, 2]], [[[3]]], image_index=[0, 1])


# ---------------------------------------------------------------------------------------------
# the varlen (flash-attn) formulation, emulated on the CPU


def test_varlen_reference_is_bottom_right_causal():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 8), torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    one = torch.tensor([0, 3], dtype=torch.int32)
    out = varlen_reference(q, k, v, one, torch.tensor([0, 5], dtype=torch.int32), 3, 5, causal=True)
    # query i sees keys 0 .. i + 2
    allowed = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    expected = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                                                v.transpose(0, 1), attn_mask=allowed)
    torch.testing.assert_close(out, expected.transpose(0, 1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_varlen_indices_match_block_mask_sdpa(heads, kv_heads):
    """The CUDA path's q/k/v gathering and cu_seqlens, run through a torch varlen kernel, equal masked SDPA."""
    p = pack_groups([[1] * 7, [2] * 4], [[[3] * 5, [4] * 2, [5] * 6], [[6] * 3]])
    T, d = p.num_tokens, 16
    g = torch.Generator().manual_seed(heads + kv_heads)
    q, k, v = (torch.randn(1, h, T, d, generator=g, dtype=torch.float64) for h in (heads, kv_heads, kv_heads))
    got = packed_varlen_attention(q, k, v, p.varlen, scaling=0.3, varlen_fn=varlen_reference)       # (1, T, H, d)
    rep = heads // kv_heads
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1),
        attn_mask=varlen_block_mask(p.varlen, T), scale=0.3)
    torch.testing.assert_close(got, want.transpose(1, 2), atol=1e-12, rtol=1e-12)
    # the SDPA backend's group-by-group attention computes the same
    module = torch.nn.Module()
    module.num_key_value_groups = rep
    grouped = packed_group_attention(module, q, k, v, p.group_masks(), scaling=0.3)
    assert grouped.shape == (1, T, heads, d) and grouped.is_contiguous()
    torch.testing.assert_close(grouped, want.transpose(1, 2), atol=1e-12, rtol=1e-12)


def test_varlen_plan_round_trips_through_mask():
    """A plan whose segments are plain causal sequences gives a block-diagonal causal mask."""
    plan = VarlenPlan(torch.arange(5), torch.tensor([0, 2, 5], dtype=torch.int32),
                      torch.tensor([0, 2, 5], dtype=torch.int32), 3, 3)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[:2, :2] = torch.ones(2, 2, dtype=torch.bool).tril()
    expected[2:, 2:] = torch.ones(3, 3, dtype=torch.bool).tril()
    assert torch.equal(varlen_block_mask(plan, 5), expected)


# ---------------------------------------------------------------------------------------------
# exactness through a real (tiny, random) LLaVA


@pytest.mark.parametrize("which", ["mha", "gqa"])
def test_packed_logprobs_match_unpacked_forwards(which, request):
    model, enc = request.getfixturevalue(which)
    prompts, responses = groups(enc)
    pixel_values = images(3)
    packed = pack_groups(prompts, responses, image_token_id=enc.image_token_id)

    model.zero_grad()
    want = unpacked_logprobs(model, prompts, responses, pixel_values)
    (want * torch.linspace(1, 2, len(want), dtype=torch.float64)).sum().float().backward()
    want_grads = param_grads(model, GRAD_PARAMS)

    model.zero_grad()
    got = packed_response_logprobs(model, packed, pixel_values)
    (got.summed * torch.linspace(1, 2, len(want))).sum().backward()
    got_grads = param_grads(model, GRAD_PARAMS)

    assert model.model.language_model.config._attn_implementation == PACKED_ATTENTION
    assert got.summed.dtype == torch.float32 and got.summed.shape == (6,)
    assert got.lengths.tolist() == [len(r) for group in responses for r in group]
    torch.testing.assert_close(got.summed.double(), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.per_token.double().sum(), want.sum(), atol=1e-4, rtol=0)
    for name in GRAD_PARAMS:
        torch.testing.assert_close(got_grads[name], want_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_float64_hidden_states_are_exact(mha):
    """In float64 every packed row equals its unpacked counterpart to rounding: the same function."""
    model = copy.deepcopy(mha[0]).double()
    prompts, responses = groups(mha[1])
    pixel_values = images(3).double()
    packed = pack_groups(prompts, responses)
    with torch.no_grad():
        got = packed_hidden_states(model, packed, pixel_values)                                  # (T, D)
        model.set_attn_implementation("sdpa")
        for g, (prompt, group) in enumerate(zip(prompts, responses)):
            p0, p1 = packed.prefix_spans[g].tolist()
            for j, response in enumerate(group):
                ids = torch.tensor([prompt + response])
                want = model.model(input_ids=ids, pixel_values=pixel_values[g:g + 1]).last_hidden_state[0]
                r0, r1 = packed.response_spans[packed.response_group.eq(g).nonzero()[j, 0]].tolist()
                torch.testing.assert_close(got[r0:r1], want[len(prompt):], atol=1e-12, rtol=0)
                torch.testing.assert_close(got[p0:p1], want[:len(prompt)], atol=1e-12, rtol=0)


def test_extra_target_column(mha):
    """K = 2: a second token per response position (POVID's noise argmax), ignored where < 0."""
    model, enc = mha
    prompts, responses = groups(enc)
    pixel_values = images(3)
    packed = pack_groups(prompts, responses)
    extra = torch.randint(0, model.config.text_config.vocab_size, packed.targets.shape,
                          generator=torch.Generator().manual_seed(3))
    extra[::3] = -100
    with torch.no_grad():
        got = packed_response_logprobs(model, packed, pixel_values, extra_targets=extra)
        hidden = packed_hidden_states(model, packed, pixel_values)[packed.logprob_index]
        logp = model.lm_head(hidden).double().log_softmax(-1)
    want_main = logp.gather(1, packed.targets[:, None])[:, 0]
    want_extra = logp.gather(1, extra.clamp(min=0)[:, None])[:, 0].masked_fill(extra < 0, 0.0)
    torch.testing.assert_close(got.per_token.double(), want_main, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.extra_per_token.double(), want_extra, atol=1e-5, rtol=0)
    sums = torch.zeros(packed.num_responses, dtype=torch.float64).index_add(0, packed.token_response, want_extra)
    torch.testing.assert_close(got.extra_summed.double(), sums, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.summed.double(), unpacked_logprobs(model, prompts, responses, pixel_values),
                               atol=1e-5, rtol=0)


def test_varlen_backend_emulated_through_the_model(gqa, monkeypatch):
    """The flash-attn path end to end on the CPU, with varlen_reference standing in for the CUDA kernel."""
    model, enc = gqa
    monkeypatch.setattr(attention, "flash_attn_varlen_func", varlen_reference)
    monkeypatch.setattr(attention, "flash_dtype", lambda query: query.dtype)
    prompts, responses = groups(enc)
    pixel_values = images(3)
    packed = pack_groups(prompts, responses)
    with torch.no_grad():
        got = packed_response_logprobs(model, packed, pixel_values, backend="varlen")
        sdpa = packed_response_logprobs(model, packed, pixel_values, backend="sdpa")
        want = unpacked_logprobs(model, prompts, responses, pixel_values)
    torch.testing.assert_close(got.summed, sdpa.summed, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.summed.double(), want, atol=1e-5, rtol=0)


def test_sdpa_backend_attends_group_by_group(gqa, monkeypatch):
    """The SDPA path never builds or attends over a (T, T) block: every SDPA call is one group's."""
    model, enc = gqa
    prompts, responses = groups(enc)
    packed = pack_groups(prompts, responses)
    longest = max(packed.group_masks().lengths)
    assert packed.num_groups == 3 and longest < packed.num_tokens
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[-2], key.shape[-2], None if attn_mask is None else tuple(attn_mask.shape)))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    tower = model.model.vision_tower.register_forward_hook(lambda *args: calls.clear())  # count decoder calls only
    try:
        got = packed_response_logprobs(model, packed, images(3), backend="sdpa")
        got.summed.sum().backward()
    finally:
        tower.remove()
    layers = model.config.text_config.num_hidden_layers
    assert len(calls) == layers * packed.num_groups
    assert max(k for _, k, _ in calls) == longest and max(q for q, _, _ in calls) == longest
    assert all(mask is not None and mask[-2:] == (q, k) for q, k, mask in calls)
    monkeypatch.undo()
    model.zero_grad()
    torch.testing.assert_close(got.summed.detach().double(),
                               unpacked_logprobs(model, prompts, responses, images(3)), atol=1e-5, rtol=0)


def test_varlen_backend_refuses_without_flash_attn(mha, monkeypatch):
    monkeypatch.setattr(attention, "flash_attn_varlen_func", None)
    model, enc = mha
    packed = pack_groups(*groups(enc))
    with pytest.raises(RuntimeError, match="flash-attn"), torch.no_grad():
        packed_hidden_states(model, packed, images(3), backend="varlen")
    with pytest.raises(ValueError, match="backend"):
        packed_hidden_states(model, packed, images(3), backend="flash")


def test_vision_tower_runs_once_per_distinct_image(mha):
    """Groups 0 and 2 share image 0: two images go through the tower, in one call."""
    model, enc = mha
    prompts, responses = groups(enc)
    pixel_values = images(2, seed=5)
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            got = packed_response_logprobs(model, pack_groups(prompts, responses, image_index=[0, 1, 0]), pixel_values)
    finally:
        hook.remove()
    assert calls == [2]
    want = unpacked_logprobs(model, prompts, responses, pixel_values, image_index=[0, 1, 0])
    torch.testing.assert_close(got.summed.double(), want, atol=1e-5, rtol=0)


def test_image_placeholder_count_is_checked(mha):
    model, enc = mha
    prompts, responses = groups(enc)
    packed = pack_groups(prompts[:2] + [[2, 5, 6]], responses)  # third prompt without its image
    with pytest.raises(ValueError, match="image placeholders"), torch.no_grad():
        packed_hidden_states(model, packed, images(3))


def test_model_generates_normally_after_packed_forward():
    model, enc = tiny_model(seed=2)
    pad = model.generation_config.pad_token_id
    short, long = enc.prompt_ids(QUESTIONS[0], first=True), enc.prompt_ids(QUESTIONS[2], first=True)
    ids = torch.tensor([[pad] * (len(long) - len(short)) + short, long])  # left-padded batch
    inputs = {"input_ids": ids, "attention_mask": (ids != pad).long(), "pixel_values": images(2)}

    def run():
        with torch.no_grad():
            logits = model(**inputs).logits
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        return logits, out

    logits_before, out_before = run()
    prompts, responses = groups(enc)
    with torch.no_grad():
        packed_response_logprobs(model, pack_groups(prompts, responses), images(3))
    assert model.model.language_model.config._attn_implementation == PACKED_ATTENTION
    logits_after, out_after = run()
    assert torch.equal(out_after, out_before)
    torch.testing.assert_close(logits_after, logits_before, atol=0, rtol=0)
    model.set_attn_implementation("sdpa")
    assert model.model.language_model.config._attn_implementation == "sdpa"


def test_gradient_checkpointing_recomputes_packed_attention():
    """Backward re-runs the layers after the forward returned: they must still see the packed attention."""
    model, enc = tiny_model(seed=3, kv_heads=2)
    prompts, responses = groups(enc)
    packed, pixel_values = pack_groups(prompts, responses), images(3)
    weights = torch.linspace(1, 2, 6)

    model.train()
    packed_response_logprobs(model, packed, pixel_values).summed.mul(weights).sum().backward()
    want = param_grads(model, GRAD_PARAMS)
    model.zero_grad()
    model.gradient_checkpointing_enable()
    got = packed_response_logprobs(model, packed, pixel_values)
    got.summed.mul(weights).sum().backward()
    assert model.model.language_model.layers[0].gradient_checkpointing
    for name in GRAD_PARAMS:
        torch.testing.assert_close(param_grads(model, GRAD_PARAMS)[name], want[name], atol=1e-6, rtol=1e-5, msg=name)


def test_lora_policy_and_disabled_adapter_reference(mha):
    """Through a peft wrapper: LoRA active = policy, ``disable_adapter()`` = reference (the base model)."""
    peft = pytest.importorskip("peft")
    base, enc = mha
    prompts, responses = groups(enc)
    pixel_values = images(3)
    packed = pack_groups(prompts, responses)
    base_want = unpacked_logprobs(base, prompts, responses, pixel_values)

    target = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=target, init_lora_weights=False)
    policy = peft.get_peft_model(copy.deepcopy(base), config)
    assert not any("lora" in n for n, _ in policy.named_parameters() if "vision_tower" in n)
    with torch.no_grad(), policy.disable_adapter():
        reference = packed_response_logprobs(policy, packed, pixel_values).summed
        reference_unpacked = unpacked_logprobs(policy, prompts, responses, pixel_values)
    got = packed_response_logprobs(policy, packed, pixel_values)
    got.summed.sum().backward()
    want = unpacked_logprobs(policy, prompts, responses, pixel_values)

    torch.testing.assert_close(reference.double(), base_want, atol=1e-5, rtol=0)
    torch.testing.assert_close(reference_unpacked, base_want, atol=1e-10, rtol=0)
    torch.testing.assert_close(got.summed.double(), want, atol=1e-5, rtol=0)
    assert (got.summed.double() - base_want).abs().max() > 1e-2  # the adapter really changes the model
    lora_grads = [p.grad for n, p in policy.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


def test_autocast_bf16(mha):
    """Under bf16 autocast the packed error against the fp32 result is no larger than eager autocast's."""
    model, enc = mha
    prompts, responses = groups(enc)
    pixel_values = images(3)
    packed = pack_groups(prompts, responses)
    with torch.no_grad():
        exact = unpacked_logprobs(model, prompts, responses, pixel_values)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = packed_response_logprobs(model, packed, pixel_values).summed
            eager = unpacked_logprobs(model, prompts, responses, pixel_values)
    got_err = (got.double() - exact).abs().max().item()
    eager_err = (eager - exact).abs().max().item()
    assert got.dtype == torch.float32
    assert got_err <= 2 * eager_err + 1e-3, (got_err, eager_err)


# ---------------------------------------------------------------------------------------------
# image features shared by a step's forwards; the tower cut at its feature layer


def test_tower_stops_at_the_feature_layer(mha):
    """Frozen tower: features equal get_image_features' exactly (float64), and the last layer never runs."""
    from halluremedy.models.packed import StepImages, tower_features

    model = copy.deepcopy(mha[0]).double().requires_grad_(False)
    pixel_values = images(3, seed=11).double()
    last = model.model.vision_tower.encoder.layers[-1]
    ran = []
    hook = last.register_forward_hook(lambda *args: ran.append(1))
    try:
        with torch.no_grad():
            want = model.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
            ran.clear()
            got = StepImages(pixel_values).features(model.model)
            cut = tower_features(model.model, pixel_values)
    finally:
        hook.remove()
    assert not ran and len(model.model.vision_tower.encoder.layers) == 3  # put back after the cut forward
    assert cut.shape == (3, 16, model.config.vision_config.hidden_size)
    torch.testing.assert_close(got, torch.stack(list(want)), atol=0, rtol=0)


def test_step_images_run_the_frozen_tower_once_for_every_forward(mha):
    """Policy (LoRA), reference (adapters disabled) and a second pack: one tower call per StepImages,
    and the log-probs those forwards give are those of fresh, unshared forwards."""
    peft = pytest.importorskip("peft")
    from halluremedy.models.packed import StepImages

    base, enc = mha
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)",
                             init_lora_weights=False)
    policy = peft.get_peft_model(copy.deepcopy(base), config)
    prompts, responses = groups(enc)
    packed, chosen = pack_groups(prompts, responses), pack_groups(prompts, [r[:1] for r in responses])
    pixel_values = images(3, seed=12)
    calls = []
    hook = policy.base_model.model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        shared = StepImages(pixel_values)
        with torch.no_grad(), policy.disable_adapter():
            ref = packed_response_logprobs(policy, packed, shared).summed
        ref_chosen = packed_response_logprobs(policy, chosen, shared).summed.detach()
        got = packed_response_logprobs(policy, packed, shared)
        got.summed.sum().backward()
        assert len(calls) == 1 and shared.tower_calls == 1
        with torch.no_grad(), policy.disable_adapter():
            ref_fresh = packed_response_logprobs(policy, packed, pixel_values).summed
        fresh = packed_response_logprobs(policy, packed, pixel_values).summed
        fresh_chosen = packed_response_logprobs(policy, chosen, pixel_values).summed
    finally:
        hook.remove()
    torch.testing.assert_close(ref, ref_fresh, atol=0, rtol=0)
    torch.testing.assert_close(got.summed.detach(), fresh.detach(), atol=0, rtol=0)
    torch.testing.assert_close(ref_chosen, fresh_chosen.detach(), atol=0, rtol=0)
    assert all(p.grad is not None for n, p in policy.named_parameters() if "lora_" in n)


def test_trainable_projector_and_tower_keep_their_gradients(mha):
    """A trainable part is never cached without grad: the projector (tower frozen) and a trainable tower
    (run whole) get the gradients fresh forwards give them."""
    from halluremedy.models.packed import StepImages

    model, enc = copy.deepcopy(mha[0]), mha[1]
    prompts, responses = groups(enc)
    packed = pack_groups(prompts, responses)
    pixel_values = images(3, seed=13)
    projector = "model.multi_modal_projector.linear_1.weight"
    tower = "model.vision_tower.encoder.layers.0.self_attn.v_proj.weight"
    for trainable in ([projector], [projector, tower]):
        model.requires_grad_(False)
        params = dict(model.named_parameters())
        prefixes = {n.rsplit(".encoder", 1)[0] if "vision" in n else "model.multi_modal_projector" for n in trainable}
        for name, p in params.items():
            p.requires_grad_(any(name.startswith(prefix) for prefix in prefixes))
        shared = StepImages(pixel_values)
        with torch.no_grad():
            packed_response_logprobs(model, packed, shared)  # a no-grad forward first (as the reference's)
        model.zero_grad()
        packed_response_logprobs(model, packed, shared).summed.sum().backward()
        got = {n: params[n].grad.clone() for n in trainable}
        model.zero_grad()
        packed_response_logprobs(model, packed, pixel_values).summed.sum().backward()
        for name in trainable:
            assert got[name].abs().sum() > 0
            torch.testing.assert_close(got[name], params[name].grad, atol=0, rtol=0, msg=name)


def test_to_device_keeps_one_copy_and_its_masks():
    p = hand_pack()
    moved = p.to("meta")
    assert p.to("meta") is moved and moved.to("cpu") is p and moved.host is p
    assert p.group_spans() == [(0, 6), (6, 10)] and moved.group_spans() == [(0, 6), (6, 10)]
    count, rows = pack_groups([[10, 7, 7, 11]], [[[13]]]).image_rows(7)
    assert count == 2 and rows.tolist() == [1, 2]
    assert p.max_target == 23
    with pytest.raises(ValueError, match=">= 0"):
        pack_groups([[1, 2]], [[[3, -1]]])


# ---------------------------------------------------------------------------------------------
# FlexAttention (forward only on the CPU: FlexAttention has no CPU backward)


def test_flex_block_mask_is_the_pack_mask():
    from halluremedy.models.attention import flex_block_mask

    p = pack_groups([[1] * 7, [2] * 4, [3] * 3], [[[3] * 5, [4] * 2, [5] * 6], [[6] * 3], [[7] * 2, [8] * 9]])
    block = flex_block_mask(p.row_group, p.row_response)
    q = torch.arange(p.num_tokens)[:, None].expand(-1, p.num_tokens)
    k = torch.arange(p.num_tokens)[None, :].expand(p.num_tokens, -1)
    zero = torch.zeros((), dtype=torch.long)
    dense = block.mask_mod(zero, zero, q, k)
    assert torch.equal(dense, varlen_block_mask(p.varlen, p.num_tokens))


@pytest.mark.parametrize("which", ["mha", "gqa"])
def test_flex_backend_forward_is_exact(which, request):
    model, enc = request.getfixturevalue(which)
    model = copy.deepcopy(model).double()
    prompts, responses = groups(enc)
    packed = pack_groups(prompts, responses)
    pixel_values = images(3, seed=14).double()
    with torch.no_grad():
        flex = packed_hidden_states(model, packed, pixel_values, backend="flex")
        sdpa = packed_hidden_states(model, packed, pixel_values, backend="sdpa")
        got = packed_response_logprobs(model, packed, pixel_values, backend="flex")
    torch.testing.assert_close(flex, sdpa, atol=1e-12, rtol=0)
    torch.testing.assert_close(got.summed.double(), unpacked_logprobs(model, prompts, responses, pixel_values),
                               atol=1e-5, rtol=0)  # log-probs come back in fp32


def test_auto_backend_on_cuda_needs_no_flash_attn(mha, monkeypatch):
    from halluremedy.models.packed import choose_backend

    llava = mha[0].model
    monkeypatch.setattr(attention, "flash_attn_varlen_func", None)
    assert choose_backend(llava, torch.device("cuda")) == "flex"
    assert choose_backend(llava, torch.device("cpu")) == "sdpa"
    monkeypatch.setattr(attention, "flash_attn_varlen_func", varlen_reference)
    assert choose_backend(llava, torch.device("cuda")) == "flex"  # fp32 weights, no autocast: flash cannot
