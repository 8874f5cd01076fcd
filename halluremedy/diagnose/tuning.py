"""LoRA SFT of a model directory on conversations (targeted instructions, reflective samples), with
the same preparation, budget and merged-model output as the POVID stages (``train/povid.py``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from halluremedy.data.coco import CocoDataset
from halluremedy.data.conversation import Conversation
from halluremedy.train.povid import TuningSpec, _finish, _prepare
from halluremedy.train.sft import SupervisedBatches, train_sft

__all__ = ["run_conversation_sft"]


def run_conversation_sft(model_dir: str | os.PathLike, conversations: Sequence[Conversation], dataset: CocoDataset,
                         out_dir: str | os.PathLike, spec: TuningSpec, *, device: str = "cpu", resume: bool = False,
                         tag: str = "conversations") -> Path:
    """``spec.steps`` steps of next-token loss on assistant turns (``train_sft``) from ``model_dir``;
    returns ``OUT/model`` (adapters merged, HF layout). ``tag`` is recorded in ``OUT/recipe.json``."""
    out_dir = Path(out_dir)
    if resume and (out_dir / "model" / "config.json").exists():
        return out_dir / "model"
    model, processor, bank, encoder = _prepare(model_dir, dataset, spec, device)
    batches = SupervisedBatches(list(conversations), encoder, bank, spec.batch_size, spec.seed)
    train_sft(model, batches, spec.loop(), out_dir, resume=resume)
    return _finish(model, processor, out_dir, spec, ["loss", "lr"],
                   {"sft": tag, "records": len(conversations), "from": str(model_dir)})
