"""The shared loop: SFT lowers the loss, resume is exact, a NaN stops the run with the batch named."""

import numpy as np
import pytest
import torch
from vlm_kernels.diffusion_noise import povid_noise_schedule

from halluremedy.data.conversation import Conversation, ConversationEncoder, Turn
from halluremedy.data.images import ImageBank
from halluremedy.train.loop import LoopConfig, read_metrics, train_loop
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
