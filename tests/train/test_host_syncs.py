"""A DPO / POVID step reads nothing back from the device, except the loop's one finiteness verdict per
optimiser step and one read of the metrics per log interval (counted on the CPU by SyncCounter)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_preference_records

from halluremedy.data.conversation import ConversationEncoder
from halluremedy.data.images import ImageBank
from halluremedy.eval.run import present_words
from halluremedy.models.lora import add_lora
from halluremedy.train import dpo, loop
from halluremedy.train.dpo import PreferenceBatches, PreferenceObjective, Reference, train_preference
from halluremedy.train.host_syncs import SyncCounter, paused
from halluremedy.train.loop import LoopConfig


def test_counter_sees_every_kind_of_read():
    x = torch.arange(6.0)
    with SyncCounter() as counter:
        x.sum().item()
        int(x[0])
        bool(x.any())
        x.tolist()
        x.nonzero()
        x[x > 2]
        with counter.paused():
            x.max().item()
        x.index_select(0, torch.tensor([1, 2]))  # no read
    assert counter.counts == {"aten::_local_scalar_dense": 3, "tolist": 1, "aten::nonzero": 1,
                              "aten::index.Tensor (boolean mask)": 1}, counter.counts
    assert x.tolist() == [0, 1, 2, 3, 4, 5]  # tolist is itself again


@pytest.mark.parametrize(("stage", "positions", "reference"), [(1, "all", "adapter"), (2, "all", "adapter"),
                                                               (2, "seen,novel,present", "adapter"),
                                                               (2, "all", "precomputed")])
def test_dpo_step_budget(stage, positions, reference, tiny_coco, tiny_llava_factory, tmp_path, monkeypatch):
    model, processor = tiny_llava_factory(5)
    encoder = ConversationEncoder(processor.tokenizer, 16)
    bank = ImageBank(tiny_coco, processor.image_processor)
    batches = PreferenceBatches(tiny_preference_records(tiny_coco), encoder, bank, 3, seed=0,
                                present_words=present_words(tiny_coco))
    policy = add_lora(model, r=4, alpha=8, dropout=0.0)
    objective = PreferenceObjective(stage=stage, noise_positions=positions)
    ref = Reference(reference)
    if reference == "precomputed":
        with policy.disable_adapter():
            ref.cache = dpo.precompute_reference(policy, batches, objective, epochs=3, seed=0,
                                                 path=tmp_path / "ref.safetensors", batch_size=3)
    steps, log_every, grad_accum = 3, 2, 2
    cfg = LoopConfig(steps=steps, lr=1e-3, grad_accum=grad_accum, log_every=log_every)

    counter = SyncCounter()
    # host side, CPU tensors on a GPU too: building the batch, AdamW's CPU step counters, checkpoints
    monkeypatch.setattr(dpo, "load_micro_batch", paused(counter, dpo.load_micro_batch))
    monkeypatch.setattr(torch.optim.AdamW, "step", paused(counter, torch.optim.AdamW.step))
    monkeypatch.setattr(loop, "save_checkpoint", paused(counter, loop.save_checkpoint))
    per_step = []

    def count_micro_steps(fn):
        def run(*args, **kwargs):
            before = counter.total
            out = fn(*args, **kwargs)
            per_step.append(counter.total - before)
            return out
        return run

    monkeypatch.setattr(dpo, "preference_step", count_micro_steps(dpo.preference_step))
    with counter:
        rows = train_preference(policy, batches, objective, ref, cfg, tmp_path / "run", seed=0)
    assert len(per_step) == steps * grad_accum and not any(per_step), counter.where  # micro-steps: none
    logs = len(rows)
    assert logs == 2 and all("loss" in r and "grad_norm" in r for r in rows)
    # the loop: one finiteness verdict per optimiser step, one read of the metrics per log interval
    assert counter.counts == {"aten::_local_scalar_dense": steps, "tolist": logs}, counter.where
