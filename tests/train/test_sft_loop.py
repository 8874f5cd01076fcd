"""The shared loop: SFT lowers the loss, resume is exact, a NaN stops the run with the batch named."""

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from vlm_kernels.diffusion_noise import povid_noise_schedule

from halluremedy.data.conversation import Conversation, ConversationEncoder, Turn
from halluremedy.data.images import ImageBank
from halluremedy.train.loop import LoopConfig, ResumeMismatch, read_metrics, train_loop
from halluremedy.train.sft import NoiseAugment, SupervisedBatches, train_sft


def _setup(tiny_coco, factory, seed=0):
    model, processor = factory(seed)
    conversations = [Conversation(im.file_name, (Turn("Describe this image.", im.captions[0]),))
                     for im in tiny_coco.images]
    bank = ImageBank(tiny_coco, processor.image_processor)
    batches = SupervisedBatches(conversations, ConversationEncoder(processor.tokenizer, 16), bank, 4, seed=1)
    return model, batches


def test_image_bank_matches_processor(tiny_coco, tiny_llava_factory):
    _, processor = tiny_llava_factory()
    bank = ImageBank(tiny_coco, processor.image_processor)
    im = tiny_coco.images[1]
    expected = processor.image_processor([tiny_coco.load_image(im)], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(bank.pixels([im.file_name]), expected, atol=1e-6, rtol=0)


def test_noise_augment_noises_the_drawn_share_at_the_drawn_steps(tiny_coco, tiny_llava_factory):
    _, processor = tiny_llava_factory()
    bank = ImageBank(tiny_coco, processor.image_processor)
    files = [im.file_name for im in tiny_coco.images] * 8
    images01, clean = bank.get01(files), bank.pixels(files)
    augment = NoiseAugment(share=0.5, max_step=1000, seed=3)
    out = augment.apply(images01, 5, bank)
    torch.testing.assert_close(augment.apply(images01, 5, bank), out, rtol=0, atol=0)  # a function of (seed, index)
    assert not torch.equal(augment.apply(images01, 6, bank), out)
    rng = np.random.default_rng([3, 5])
    noised, steps = rng.random(len(files)) < 0.5, rng.integers(0, 1000, len(files))
    assert 0 < noised.sum() < len(files)
    abar = povid_noise_schedule()
    for b in range(len(files)):
        if not noised[b]:
            torch.testing.assert_close(out[b], clean[b], rtol=0, atol=0)
            continue
        # x_k = sqrt(abar) x0 + sqrt(1 - abar) eps, normalised: the residual has std sqrt(1 - abar) / std
        k = int(steps[b])
        residual = out[b] * bank.std[0] + bank.mean[0] - abar[k].sqrt() * images01[b]
        assert residual.std().item() == pytest.approx((1 - abar[k]).sqrt().item(), rel=0.1, abs=2e-3)
    torch.testing.assert_close(NoiseAugment(0.0).apply(images01, 5, bank), clean, rtol=0, atol=0)
    with pytest.raises(ValueError):
        NoiseAugment(1.5)


def test_sft_learns_and_resume_is_exact(tiny_coco, tiny_llava_factory, tmp_path):
    cfg = LoopConfig(steps=8, lr=3e-3, log_every=1, save_every=4)
    model, batches = _setup(tiny_coco, tiny_llava_factory)
    full = train_sft(model, batches, cfg, tmp_path / "full")
    assert full[-1]["loss"] < 0.7 * full[0]["loss"]

    # a run killed right after its step-4 checkpoint, then resumed by a fresh process
    model3, batches3 = _setup(tiny_coco, tiny_llava_factory)
    assert _run_until(model3, batches3, cfg, tmp_path / "resumed", stop_after=4) == 4
    model4, batches4 = _setup(tiny_coco, tiny_llava_factory)
    train_sft(model4, batches4, cfg, tmp_path / "resumed", resume=True)
    resumed = read_metrics(tmp_path / "resumed")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    for (n, p), (_, q) in zip(model.named_parameters(), model4.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


def _run_until(model, batches, cfg, out_dir, stop_after):
    """Run the loop but kill it (an exception) right after step ``stop_after``'s checkpoint."""
    class Killed(Exception):
        pass

    device = next(model.parameters()).device

    def micro_step(step, micro):
        if step == stop_after:
            raise Killed
        b = {k: v.to(device) for k, v in batches.batch(step * cfg.grad_accum + micro).items()}
        loss = model(**b).loss
        return loss, {"loss": loss.item()}

    with pytest.raises(Killed):
        train_loop(model, micro_step, cfg, out_dir)
    return len(read_metrics(out_dir))


def test_nan_loss_names_step_and_batch(tiny_coco, tiny_llava_factory, tmp_path):
    model, _ = _setup(tiny_coco, tiny_llava_factory)

    def micro_step(step, micro):
        loss = sum(p.sum() for p in model.parameters()) * (float("nan") if step == 2 else 0.0)
        return loss, {"loss": 0.0, "batch": f"records {step}"}

    with pytest.raises(FloatingPointError, match="step 2 micro-batch 0 \\(records 2\\)"):
        train_loop(model, micro_step, LoopConfig(steps=5, lr=1e-3, save_every=1), tmp_path)
    assert (tmp_path / "checkpoint" / "trainable.safetensors").exists()


class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint in a shared directory could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_holds_no_pickle_and_an_old_pickled_one_is_refused_unopened(tiny_coco, tiny_llava_factory, tmp_path):
    model, batches = _setup(tiny_coco, tiny_llava_factory)
    cfg = LoopConfig(steps=2, lr=1e-3, save_every=1)
    train_sft(model, batches, cfg, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir()) == \
        ["state.json", "state.safetensors", "trainable.safetensors"]

    crafted = tmp_path / "crafted"
    (crafted / "checkpoint").mkdir(parents=True)
    shutil.copy(tmp_path / "run" / "checkpoint" / "trainable.safetensors", crafted / "checkpoint")
    marker = tmp_path / "payload-ran"
    torch.save({"step": _Payload(marker)}, crafted / "checkpoint" / "optimizer.pt")
    with pytest.raises(ValueError, match="old layout .*not loading it"):
        train_sft(model, batches, cfg, crafted, resume=True)
    assert not marker.exists()


def _nan_grad_at(model, bad_steps):
    """A micro-step whose loss is finite but whose gradient is NaN at ``bad_steps``."""
    param = next(p for p in model.parameters() if p.requires_grad)

    def micro_step(step, micro):
        weight = param * 1.0
        if step in bad_steps:
            weight.register_hook(lambda g: g * float("nan"))
        loss = weight.sum() * 1e-3
        return loss, {"loss": loss.item(), "batch": f"records {step}"}

    return micro_step


def test_nonfinite_gradient_is_never_applied_and_names_the_last_good_checkpoint(tiny_coco, tiny_llava_factory,
                                                                                 tmp_path):
    model, _ = _setup(tiny_coco, tiny_llava_factory)
    with pytest.raises(FloatingPointError, match="gradient norm nan at step 0 .*not applied; no checkpoint was written"):
        train_loop(model, _nan_grad_at(model, {0}), LoopConfig(steps=3, lr=1e-3), tmp_path / "none")
    assert not (tmp_path / "none" / "checkpoint").exists()

    with pytest.raises(FloatingPointError, match="at step 2 .*last good checkpoint: step 2 in"):
        train_loop(model, _nan_grad_at(model, {2}), LoopConfig(steps=5, lr=1e-3, save_every=1), tmp_path / "two")
    saved = load_file(tmp_path / "two" / "checkpoint" / "trainable.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in saved.values())
    current = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for n, w in saved.items():  # the failed step moved nothing
        torch.testing.assert_close(current[n], w, rtol=0, atol=0, msg=n)


def test_skip_policy_counts_nonfinite_steps_and_metrics_stay_strict_json(tiny_coco, tiny_llava_factory, tmp_path):
    model, _ = _setup(tiny_coco, tiny_llava_factory)

    def micro_step(step, micro):
        loss = sum(p.sum() for p in model.parameters() if p.requires_grad) * 1e-3
        if step == 1:
            loss = loss * float("nan")
        return loss, {"loss": loss.item()}

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = LoopConfig(steps=3, lr=1e-3, log_every=1, max_nonfinite_steps=1)
    train_loop(model, micro_step, cfg, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()

    def refuse(name):
        raise AssertionError(f"bare {name} in metrics.jsonl")

    rows = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [r["nonfinite_steps"] for r in rows] == [0, 1, 1]
    assert rows[1]["loss"] is None and rows[1]["lr"] == rows[0]["lr"]  # the scheduler did not move either
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)


def test_resume_refuses_changed_settings_unless_asked(tiny_coco, tiny_llava_factory, tmp_path):
    cfg = LoopConfig(steps=6, lr=3e-3, log_every=1, save_every=2)
    model, batches = _setup(tiny_coco, tiny_llava_factory)
    assert _run_until(model, batches, cfg, tmp_path, stop_after=2) == 2
    changed = replace(cfg, lr=1e-3)
    with pytest.raises(ResumeMismatch, match=r"loop\.lr: 0\.003 -> 0\.001"):
        train_sft(model, batches, changed, tmp_path, resume=True)
    with pytest.raises(ResumeMismatch, match=r"data: a -> b"):
        _resume_with_settings(model, cfg, tmp_path, stored="a", new="b")
    rows = train_sft(model, batches, changed, tmp_path, resume=True, allow_changes=True)
    warmup = math.ceil(changed.warmup_ratio * changed.steps)
    for row in rows:  # the new peak lr on the same cosine, from the step the run stopped at
        progress = (row["step"] - warmup) / (changed.steps - warmup)
        assert row["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * progress)), rel=1e-6)
    assert json.loads((tmp_path / "settings.json").read_text())["loop"]["lr"] == 1e-3


def _resume_with_settings(model, cfg, out_dir, stored, new):
    """Resume a run recorded with recipe settings ``{"data": stored}`` with ``{"data": new}``."""
    settings = json.loads((out_dir / "settings.json").read_text())
    (out_dir / "settings.json").write_text(json.dumps({**settings, "data": stored}))
    try:
        def never(step, micro):
            raise AssertionError("a refused resume must not train")

        train_loop(model, never, cfg, out_dir, resume=True, settings={"data": new})
    finally:
        (out_dir / "settings.json").write_text(json.dumps(settings))


def test_weighted_token_loss_matches_a_float64_reference():
    from halluremedy.train.sft import weighted_token_loss
    g = torch.Generator().manual_seed(4)
    for B, T, V in ((1, 2, 3), (3, 9, 17), (5, 13, 31)):
        logits = torch.randn(B, T, V, generator=g, requires_grad=True)
        labels = torch.randint(0, V, (B, T), generator=g)
        labels[torch.rand(B, T, generator=g) < 0.3] = -100
        labels[0, 1] = V - 1  # at least one scored token
        weights = torch.rand(B, T, generator=g) * 4 * (labels != -100)
        weights[0, 1] = 0.5
        got = weighted_token_loss(logits, labels, weights)
        # float64 loop over every scored position
        lp = logits.detach().double().log_softmax(-1)
        num = den = 0.0
        for b in range(B):
            for t in range(T - 1):
                if labels[b, t + 1] != -100:
                    w = float(weights[b, t + 1])
                    num -= w * float(lp[b, t, labels[b, t + 1]])
                    den += w
        assert got.item() == pytest.approx(num / den, rel=1e-5)
        got.backward()
        ref_logits = logits.detach().double().requires_grad_(True)
        w = weights[:, 1:].double() * (labels[:, 1:] != -100)
        nll = -ref_logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].clamp_min(0)[..., None])[..., 0]
        ((nll * w).sum() / w.sum()).backward()
        torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=1e-5, atol=1e-7)


def test_unit_weights_give_the_models_own_loss(tiny_coco, tiny_llava_factory):
    from halluremedy.train.sft import weighted_token_loss
    model, processor = tiny_llava_factory(0)
    conversations = [Conversation(im.file_name, (Turn("Describe this image.", im.captions[0]),))
                     for im in tiny_coco.images]
    bank, encoder = ImageBank(tiny_coco, processor.image_processor), ConversationEncoder(processor.tokenizer, 16)
    plain = SupervisedBatches(conversations, encoder, bank, 4, seed=1).batch(0)
    b = SupervisedBatches(conversations, encoder, bank, 4, seed=1, weights=[1.0] * len(conversations)).batch(0)
    assert "token_weights" not in plain
    assert torch.equal(b["token_weights"], (plain["labels"] != -100).float())
    with torch.no_grad():
        own = model(**plain).loss
        inputs = {k: v for k, v in b.items() if k not in ("labels", "token_weights")}
        mine = weighted_token_loss(model(**inputs).logits, b["labels"], b["token_weights"])
    torch.testing.assert_close(mine, own, rtol=1e-5, atol=1e-6)
    for bad in ([1.0], [-1.0] * len(conversations)):
        with pytest.raises(ValueError, match="one value >= 0 per conversation"):
            SupervisedBatches(conversations, encoder, bank, 4, seed=1, weights=bad)
