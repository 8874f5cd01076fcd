"""run_conversation_sft: LoRA SFT from a model directory to a merged model directory, resumable."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from halluremedy.data.conversation import Conversation, Turn
from halluremedy.models.llava import load_model, save_model
from halluremedy.train.loop import ResumeMismatch
from halluremedy.train.stages import TuningSpec, run_conversation_sft


def test_run_conversation_sft_trains_merges_and_resumes(tiny_coco, tiny_llava_factory, tmp_path):
    model, processor = tiny_llava_factory(0)
    save_model(model, processor, tmp_path / "base")
    conversations = [Conversation(im.file_name, (Turn("Is there a square in the image?", "Yes"),
                                                 Turn("Explain why.", "a red square.")), f"c{k}")
                     for k, im in enumerate(tiny_coco.images)]
    spec = TuningSpec(steps=3, batch_size=2, lr=1e-2, lora_r=4, lora_alpha=8)
    out = run_conversation_sft(tmp_path / "base", conversations, tiny_coco, tmp_path / "run", spec, tag="test")
    assert out == tmp_path / "run" / "model"
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recipe["sft"] == "test" and recipe["records"] == 6 and recipe["tuning"]["lora_r"] == 4
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    tuned, _ = load_model(out)
    base, _ = load_model(tmp_path / "base")
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed and all("language_model" in n for n in changed)  # adapters merged into the decoder only
    mtime = (out / "model.safetensors").stat().st_mtime
    assert run_conversation_sft(tmp_path / "base", conversations, tiny_coco, tmp_path / "run", spec,
                                resume=True, tag="test") == out
    assert (out / "model.safetensors").stat().st_mtime == mtime
    # a finished stage is reused only for the same settings: another lr or other records are refused
    with pytest.raises(ResumeMismatch, match=r"tuning\.lr: 0\.01 -> 0\.001"):
        run_conversation_sft(tmp_path / "base", conversations, tiny_coco, tmp_path / "run", replace(spec, lr=1e-3),
                             resume=True, tag="test")
    with pytest.raises(ResumeMismatch, match=r"records: 6 -> 5.*records_sha256"):
        run_conversation_sft(tmp_path / "base", conversations[:5], tiny_coco, tmp_path / "run", spec,
                             resume=True, tag="test")
    assert run_conversation_sft(tmp_path / "base", conversations, tiny_coco, tmp_path / "run", replace(spec, lr=1e-3),
                                resume=True, allow_changes=True, tag="test") == out
    assert (out / "model.safetensors").stat().st_mtime == mtime
