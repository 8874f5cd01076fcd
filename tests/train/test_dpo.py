"""DPO / POVID steps on the packed forward, against plain full-logit transcriptions in float64."""

import math

import pytest
import torch
from helpers import tiny_preference_records

from halluremedy.data.conversation import ConversationEncoder
from halluremedy.data.images import ImageBank
from halluremedy.eval.run import present_words
from halluremedy.models.llava import save_model
from halluremedy.models.lora import add_lora
from halluremedy.train.dpo import (
    PreferenceBatches,
    PreferenceObjective,
    Reference,
    cached_reference,
    load_reference_cache,
    precompute_reference,
    preference_step,
    reference_logps,
    score_batch,
)
from halluremedy.train.povid import noise_argmax, noised_images
from halluremedy.train.stages import TuningSpec, run_preference_stage

PROMPT = "Describe this image."


@pytest.fixture
def setup(tiny_coco, tiny_llava_factory):
    model, processor = tiny_llava_factory(5)
    encoder = ConversationEncoder(processor.tokenizer, 16)
    bank = ImageBank(tiny_coco, processor.image_processor)
    records = tiny_preference_records(tiny_coco)
    return model, records, encoder, PreferenceBatches(records, encoder, bank, 3, seed=0,
                                                      present_words=present_words(tiny_coco))


def _full_logprobs(model, encoder, bank, record, answer, pixel):
    """Plain transcription: one unpacked sequence, full logits, log_softmax, gather."""
    prompt = encoder.prompt_ids(record.prompt, first=True)
    resp = encoder.response_ids(answer)
    ids = torch.tensor([prompt + resp])
    logits = model(input_ids=ids, pixel_values=pixel).logits[0].double()
    logp = logits.log_softmax(-1)[len(prompt) - 1:-1]  # rows predicting the response tokens
    return logp, torch.tensor(resp)


def test_scores_and_noise_argmax_match_full_logit_transcription(setup, tiny_coco):
    model, all_records, encoder, batches = setup
    model.eval()
    with torch.no_grad():  # favour one word of the captions, so the clean argmax is y+ at some positions
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.lm_head.out_features))
        model.lm_head.bias[encoder.response_ids("a")[0]] = 4.0
    batch = batches.batch(0)
    bank = batches.bank
    images01 = bank.get01(batch.files)
    clean = bank.normalize(images01)
    noised = noised_images(bank, images01, batch.records, seed=0, epoch=0, step=500)
    with torch.no_grad():
        argmax = noise_argmax(model, batch.chosen_only, noised)
        got = score_batch(model, batch, clean, argmax)
        shifted = (argmax + 1) % model.lm_head.out_features  # a noise column unlike the argmax, to see the gate act
        seen = score_batch(model, batch, clean, shifted, rules=frozenset({"seen"}))
        # half the column words y+ says elsewhere (its own tokens shifted by one), half words it never says
        mixed = torch.where(torch.arange(len(shifted)) % 2 == 0, shifted, batch.chosen_only.targets.roll(1))
        novel = score_batch(model, batch, clean, mixed, rules=frozenset({"novel"}))
        both = score_batch(model, batch, clean, mixed, rules=PreferenceObjective(stage=2, noise_positions="seen,novel")
                           .noise_position_rules)
        absent = score_batch(model, batch, clean, mixed, rules=frozenset({"present"}))
        records = [all_records[r] for r in batch.records]
        words = present_words(tiny_coco)
        offset, kept, flipped, novel_kept, both_kept, absent_kept = 0, 0, 0, 0, 0, 0
        for b, rec in enumerate(records):
            logp_noised, resp = _full_logprobs(model, encoder, bank, rec, rec.chosen, noised[b:b + 1])
            a = logp_noised.argmax(-1)
            assert torch.equal(argmax[offset:offset + len(resp)], a)
            offset += len(resp)
            logp, resp = _full_logprobs(model, encoder, bank, rec, rec.chosen, clean[b:b + 1])
            c = int(batch.chosen_index[b])
            # noise_positions="seen": the noised argmax scored where the clean argmax is y+, y+ elsewhere
            known = logp.argmax(-1) == resp
            kept += int(known.sum())
            gated = torch.where(known, shifted[offset - len(resp):offset], resp)
            flipped += int((gated != resp).sum())
            assert seen.noise[c].item() == pytest.approx(logp.gather(1, gated[:, None]).sum().item(), abs=1e-4)
            assert seen.summed[c].item() == pytest.approx(got.summed[c].item(), abs=1e-6)
            # noise_positions="novel": the noised-column token scored where y+ never contains it, y+ elsewhere
            a_shift = mixed[offset - len(resp):offset]
            fresh = torch.tensor([int(t) not in set(resp.tolist()) for t in a_shift])
            novel_kept += int(fresh.sum())
            kept_novel = torch.where(fresh, a_shift, resp)
            assert novel.noise[c].item() == pytest.approx(logp.gather(1, kept_novel[:, None]).sum().item(), abs=1e-4)
            kept_both = torch.where(fresh & known, a_shift, resp)  # "seen,novel": both rules must hold
            both_kept += int((fresh & known).sum())
            assert both.noise[c].item() == pytest.approx(logp.gather(1, kept_both[:, None]).sum().item(), abs=1e-4)
            # "present": cancelled where the column token belongs to a word naming a class in the image
            named = {t for w in words[rec.image] for t in encoder.response_ids(w)[:-1]}
            not_named = torch.tensor([int(t) not in named for t in a_shift])
            absent_kept += int(not_named.sum())
            kept_absent = torch.where(not_named, a_shift, resp)
            assert absent.noise[c].item() == pytest.approx(logp.gather(1, kept_absent[:, None]).sum().item(), abs=1e-4)
            assert got.summed[c].item() == pytest.approx(logp.gather(1, resp[:, None]).sum().item(), abs=1e-4)
            assert got.noise[c].item() == pytest.approx(logp.gather(1, a[:, None]).sum().item(), abs=1e-4)
            for j, rej in enumerate(rec.rejected):
                logp_r, resp_r = _full_logprobs(model, encoder, bank, rec, rej, clean[b:b + 1])
                assert got.summed[c + 1 + j].item() == pytest.approx(logp_r.gather(1, resp_r[:, None]).sum().item(),
                                                                     abs=1e-4)
    assert 0 < kept < offset and flipped  # both branches of the "seen" rule are exercised
    assert 0 < novel_kept < offset and 0 < both_kept < min(kept, novel_kept)  # and of "novel" and of both
    assert 0 < absent_kept < offset  # and of "present"


def test_present_rule_needs_present_words(tiny_coco, tiny_llava_factory):
    _, processor = tiny_llava_factory(5)
    encoder = ConversationEncoder(processor.tokenizer, 16)
    batches = PreferenceBatches(tiny_preference_records(tiny_coco), encoder, ImageBank(tiny_coco, processor.image_processor), 3, 0)
    PreferenceObjective(stage=2, noise_positions="seen,novel").check_batches(batches)
    with pytest.raises(ValueError, match="present_words"):
        PreferenceObjective(stage=2, noise_positions="novel,present").check_batches(batches)


def test_preference_stage_passes_the_present_rule_its_words(tiny_coco, tiny_llava_factory, tmp_path):
    model, processor = tiny_llava_factory(5)
    save_model(model, processor, tmp_path / "base")
    spec = TuningSpec(steps=2, batch_size=3, lora_r=4, lora_alpha=8)  # step 0 runs at warm-up lr 0
    objective = PreferenceObjective(stage=2, noise_positions="seen,novel,present")
    records = tiny_preference_records(tiny_coco)
    with pytest.raises(ValueError, match="present_words"):
        run_preference_stage(tmp_path / "base", records, tiny_coco, tmp_path / "refused", objective, spec)
    out = run_preference_stage(tmp_path / "base", records, tiny_coco, tmp_path / "stage2", objective, spec,
                               present_words=present_words(tiny_coco))
    # the peft adapter beside the merged model: base + adapter, merged, is that model
    from peft import PeftModel

    from halluremedy.models.llava import load_model

    before = {k: v.clone() for k, v in load_model(tmp_path / "base")[0].state_dict().items()}
    base, _ = load_model(tmp_path / "base")
    rebuilt = PeftModel.from_pretrained(base, tmp_path / "stage2" / "adapter").merge_and_unload().state_dict()
    merged = load_model(out)[0].state_dict()
    assert rebuilt.keys() == merged.keys() == before.keys()
    for name, weight in merged.items():
        torch.testing.assert_close(rebuilt[name], weight, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(merged[k], before[k]) for k in merged)  # the stage moved weights: the check can fail


@pytest.mark.parametrize("bad", ["", "seen,", "novel,all", "unseen"])
def test_noise_positions_must_name_known_rules(bad):
    with pytest.raises(ValueError, match="noise_positions"):
        PreferenceObjective(stage=2, noise_positions=bad)


@pytest.mark.parametrize(("stage", "positions"), [(1, "all"), (2, "all"), (2, "seen"), (2, "novel"), (2, "seen,novel"), (2, "seen,novel,present")])
def test_lora_at_init_gives_log2_and_cache_matches_live_reference(setup, stage, positions, tmp_path):
    model, _, _, batches = setup
    policy = add_lora(model, r=4, alpha=8, dropout=0.0)
    objective = PreferenceObjective(stage=stage, beta=0.1, noise_positions=positions)
    reference = Reference("adapter")
    batch = batches.batch(1)
    images01 = batches.bank.get01(batch.files)
    clean = batches.bank.normalize(images01)
    noised = None
    if stage == 2:
        noised = noised_images(batches.bank, images01, batch.records, seed=7, epoch=0, step=500)
    ref = reference_logps(policy, reference, batch, clean, noised, rules=objective.noise_position_rules)
    loss, metrics = preference_step(policy, reference, objective, batch, clean, noised)
    # LoRA B = 0: policy == reference, every margin is 0, each sigmoid DPO term is log 2
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in policy.named_parameters() if "lora" in n)

    with policy.disable_adapter():
        cache = precompute_reference(policy, batches, objective, epochs=1, seed=7, path=tmp_path / "ref.safetensors",
                                     batch_size=2)
    cached = cached_reference(cache, batch, 0, batch.scored.num_responses)
    torch.testing.assert_close(cached.summed, ref.summed, atol=1e-4, rtol=0)
    if stage == 2:
        torch.testing.assert_close(cached.noise[batch.chosen_index], ref.noise[batch.chosen_index], atol=1e-4, rtol=0)


def _transcribed_logps(model, encoder, bank, record, clean, noised, rules, present):
    """One model's sums for one record, by plain full-logit forwards in float64: y+, every y-, and
    (``noised``) the noise column with POVID's position rules, written out position by position."""
    logp, chosen = _full_logprobs(model, encoder, bank, record, record.chosen, clean)
    rejected = []
    for answer in record.rejected:
        logp_r, resp_r = _full_logprobs(model, encoder, bank, record, answer, clean)
        rejected.append(logp_r.gather(1, resp_r[:, None]).sum())
    noise = None
    if noised is not None:
        with torch.no_grad():
            a = _full_logprobs(model, encoder, bank, record, record.chosen, noised)[0].argmax(-1)
            keep = torch.ones(len(chosen), dtype=torch.bool)
            if "seen" in rules:
                keep &= logp.argmax(-1) == chosen
            if "novel" in rules:
                keep &= torch.tensor([int(t) not in set(chosen.tolist()) for t in a])
            if "present" in rules:
                keep &= torch.tensor([int(t) not in present for t in a])
        noise = logp.gather(1, torch.where(keep, a, chosen)[:, None]).sum()
    return logp.gather(1, chosen[:, None]).sum(), rejected, noise, len(chosen)


def _random_lora(model, *, seed: int):
    """LoRA r=4 with random B (at init B = 0 and the policy equals the reference)."""
    torch.manual_seed(seed)
    policy = add_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return policy


@pytest.mark.parametrize(("stage", "positions", "nll_alpha"),
                         [(1, "all", 0.0), (1, "all", 0.7), (2, "all", 0.0), (2, "seen", 0.0), (2, "novel", 0.3),
                          (2, "seen,novel,present", 0.0)])
def test_preference_step_matches_float64_transcription(setup, tiny_coco, stage, positions, nll_alpha):
    """The one step (reference, policy, loss) against a float64 transcription of POVID's formulas,
    loss and every LoRA gradient, on random adapters: 3 records of odd lengths, 1 or 2 rejected each."""
    model, all_records, encoder, batches = setup
    policy = _random_lora(model, seed=3)
    objective = PreferenceObjective(stage=stage, beta=0.1, nll_alpha=nll_alpha, noise_positions=positions)
    batch = batches.batch(0)
    bank = batches.bank
    images01 = bank.get01(batch.files)
    clean = bank.normalize(images01)
    noised = noised_images(bank, images01, batch.records, seed=7, epoch=0, step=500) if stage == 2 else None
    loss, _ = preference_step(policy, Reference("adapter"), objective, batch, clean, noised)
    loss.backward()
    got = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    policy.zero_grad()

    words = present_words(tiny_coco)
    rules, beta = objective.noise_position_rules, objective.beta
    losses = []
    for b, row in enumerate(batch.records):
        rec = all_records[row]
        present = {t for w in words[rec.image] for t in encoder.response_ids(w)[:-1]}
        images = (clean[b:b + 1], None if noised is None else noised[b:b + 1])
        pc, prs, pn, length = _transcribed_logps(policy, encoder, bank, rec, *images, rules, present)
        with torch.no_grad(), policy.disable_adapter():
            rc, rrs, rn, _ = _transcribed_logps(policy, encoder, bank, rec, *images, rules, present)
        for pr, rr in zip(prs, rrs):
            pair = -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr)))
            if stage == 2:
                noise = -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pn - rn)))
                pair = objective.weight_text * pair + objective.weight_noise * noise
            losses.append(pair + nll_alpha * -pc / length)
    want = torch.stack(losses).mean()
    assert loss.item() == pytest.approx(want.item(), abs=1e-5)
    want.backward()
    assert got and got.keys() == {n for n, p in policy.named_parameters() if p.grad is not None}
    for name, grad in got.items():
        torch.testing.assert_close(grad, policy.get_parameter(name).grad.float(), atol=1e-5, rtol=1e-4, msg=name)


def test_text_only_stage2_is_the_text_term_without_the_noised_forwards(setup, monkeypatch, tmp_path):
    """weight_noise 0 (POVID's text-only ablation): no noised forward runs, in the step or the reference
    cache, and the step is stage 1's sigmoid DPO + NLL scaled by weight_text, loss and LoRA gradients."""
    model, _, _, batches = setup
    policy = _random_lora(model, seed=5)
    batch = batches.batch(0)
    clean = batches.bank.normalize(batches.bank.get01(batch.files))
    stage1 = PreferenceObjective(stage=1, beta=0.1, nll_alpha=0.4)
    want, _ = preference_step(policy, Reference("adapter"), stage1, batch, clean, None)
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    policy.zero_grad()

    def no_noised_forward(*args, **kwargs):
        raise AssertionError("a noised forward ran with weight_noise 0")

    monkeypatch.setattr("halluremedy.train.dpo.noise_argmax", no_noised_forward)
    text_only = PreferenceObjective(stage=2, beta=0.1, nll_alpha=0.4, weight_text=1.0, weight_noise=0.0)
    assert not text_only.noise_term and PreferenceObjective(stage=2).noise_term
    loss, metrics = preference_step(policy, Reference("adapter"), text_only, batch, clean, None)
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    assert "text/rewards/margin" in metrics and not any(k.startswith("noise/") for k in metrics)
    loss.backward()
    assert want_grads and want_grads.keys() == {n for n, p in policy.named_parameters() if p.grad is not None}
    for name, grad in want_grads.items():
        torch.testing.assert_close(policy.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-5, msg=name)

    path = tmp_path / "ref.safetensors"
    with policy.disable_adapter():
        cache = precompute_reference(policy, batches, text_only, epochs=2, seed=7, path=path, batch_size=2)
    assert cache["noise"].shape == (0, len(batches))
    assert load_reference_cache(path, seed=7, stage=2, records=len(batches))["chosen"].shape == (len(batches),)
    with pytest.raises(ValueError, match="no noise sums"):
        load_reference_cache(path, seed=7, stage=2, records=len(batches), noise_term=True)
