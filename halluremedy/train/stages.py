"""Tuning stages as reusable steps, each from a model directory to a merged model directory: a POVID
preference stage, LoRA SFT on conversations, and the continued-SFT control with the same data and
budget as a preference run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from halluremedy.data.coco import CocoDataset, write_json_atomic
from halluremedy.data.conversation import Conversation, ConversationEncoder, Turn
from halluremedy.data.images import ImageBank
from halluremedy.data.preference import PreferenceRecord
from halluremedy.models.fused import apply_liger, compile_decoder
from halluremedy.models.llava import image_seq_length, load_model
from halluremedy.models.lora import add_lora, merge_lora
from halluremedy.train.distributed import current_shard, save_model_on_main
from halluremedy.train.dpo import (
    PreferenceBatches,
    PreferenceObjective,
    Reference,
    load_reference_cache,
    precompute_reference,
    train_preference,
)
from halluremedy.train.loop import LoopConfig, check_resume_settings, plot_metrics
from halluremedy.train.sft import SupervisedBatches, train_sft


@dataclass(frozen=True)
class TuningSpec:
    """How the model is adapted and optimised in one stage (POVID: LoRA r128/a256/d0.05)."""

    steps: int = 200
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_ratio: float = 0.03
    lora: bool = True
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    gradient_checkpointing: bool = False
    seed: int = 0
    # Fused decoder kernels on CUDA (halluremedy.models.fused): "" (plain torch), or a comma-joined
    # subset of DECODER_KERNELS: "liger" (Liger's RMSNorm / SwiGLU / RoPE), "compile" (torch.compile
    # per decoder layer). The same function, faster; bench/gpu_check.py measures each.
    decoder_kernels: str = ""

    def loop(self) -> LoopConfig:
        return LoopConfig(steps=self.steps, lr=self.lr, warmup_ratio=self.warmup_ratio, grad_accum=self.grad_accum,
                          log_every=max(1, self.steps // 50), save_every=max(1, self.steps // 4))


def _prepare(model_dir: str | os.PathLike, dataset: CocoDataset, spec: TuningSpec, device: str):
    model, processor = load_model(model_dir, device=device)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    bank = ImageBank(dataset, processor.image_processor)
    encoder = ConversationEncoder(processor.tokenizer, image_seq_length(model),
                                  max_length=model.config.text_config.max_position_embeddings)
    torch.manual_seed(spec.seed)
    kernels = [k for k in spec.decoder_kernels.split(",") if k]
    if "liger" in kernels:
        apply_liger(model)
    if spec.lora:
        model = add_lora(model, spec.lora_r, spec.lora_alpha, spec.lora_dropout)
    if "compile" in kernels:  # after the adapters: each compiled layer holds its LoRA linears
        compile_decoder(model)
    return model, processor, bank, encoder


def stage_settings(spec: TuningSpec, records: Sequence[Any], **extra: Any) -> dict[str, Any]:
    """What defines a stage's result: the tuning, the training records (count and content digest) and
    ``extra`` (objective, starting model, ...). Stored as ``OUT/recipe.json`` and compared on resume."""
    digest = hashlib.sha256(json.dumps([asdict(r) for r in records], sort_keys=True).encode()).hexdigest()[:16]
    return {"tuning": asdict(spec), "records": len(records), "records_sha256": digest, **extra}


def _finished(out_dir: Path, settings: dict[str, Any], resume: bool, allow_changes: bool) -> bool:
    """True when ``resume`` finds the stage's model already made with ``settings`` (refused if made
    with others, unless ``allow_changes``)."""
    if not (resume and (out_dir / "model" / "config.json").exists()):
        return False
    check_resume_settings(out_dir, settings, allow_changes, stored_name="recipe.json")
    return True


def _finish(model, processor, out_dir: Path, spec: TuningSpec, keys: list[str], settings: dict[str, Any]) -> Path:
    """Save the peft adapter as ``OUT/adapter`` (LoRA runs, never FSDP-sharded), merge it and save
    ``OUT/model`` (rank 0, with an FSDP-sharded model's weights gathered from every rank; the other
    ranks wait for it)."""
    if spec.lora and current_shard().is_main:
        model.save_pretrained(out_dir / "adapter")
    save_model_on_main(merge_lora(model) if spec.lora else model, processor, out_dir / "model")
    if current_shard().is_main:
        plot_metrics(out_dir, keys)
        write_json_atomic(out_dir / "recipe.json", settings, indent=2)
    return out_dir / "model"


def run_preference_stage(model_dir: str | os.PathLike, records: list[PreferenceRecord], dataset: CocoDataset,
                         out_dir: str | os.PathLike, objective: PreferenceObjective, spec: TuningSpec, *,
                         reference: str = "adapter", device: str = "cpu", resume: bool = False,
                         allow_changes: bool = False, present_words: Mapping[str, Sequence[str]] | None = None
                         ) -> Path:
    """Train one DPO/POVID stage from ``model_dir``; returns ``OUT/model`` (adapters merged, HF layout).

    ``resume``: reuse a finished stage, continue an interrupted one; both only when made with the same
    settings (``OUT/recipe.json``, ``OUT/settings.json``), unless ``allow_changes``. ``present_words``:
    image file name -> the words naming the classes present in it, which ``noise_positions`` rule
    "present" needs (``halluremedy.eval.run.present_words(dataset)``); other objectives ignore it."""
    out_dir = Path(out_dir)
    settings = stage_settings(spec, records, objective=asdict(objective), reference=reference, **{"from": str(model_dir)})
    if _finished(out_dir, settings, resume, allow_changes):
        return out_dir / "model"
    model, processor, bank, encoder = _prepare(model_dir, dataset, spec, device)
    if reference == "adapter" and not spec.lora:
        raise ValueError("reference='adapter' needs LoRA; use 'copy' or 'precomputed' for a full fine-tune")
    needs_words = "present" in objective.noise_position_rules  # only that rule reads them
    batches = PreferenceBatches(records, encoder, bank, spec.batch_size, spec.seed,
                                present_words=present_words if needs_words else None)
    ref = Reference(reference, model)
    if reference == "precomputed":
        epochs = -(-spec.steps * spec.grad_accum * spec.batch_size * current_shard().world // len(records))
        path = out_dir / "reference_logps.safetensors"
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume and path.exists():
            ref.cache = load_reference_cache(path, seed=spec.seed, stage=objective.stage, records=len(records),
                                             noise_positions=objective.noise_positions,
                                             noise_term=objective.noise_term)
        else:
            scope = model.disable_adapter() if spec.lora else contextlib.nullcontext()
            with scope:
                ref.cache = precompute_reference(model, batches, objective, epochs, spec.seed, path)
    train_preference(model, batches, objective, ref, spec.loop(), out_dir, seed=spec.seed, resume=resume,
                     allow_changes=allow_changes, settings=settings)
    keys = ["loss", "rewards/accuracy", "rewards/margin"] if objective.stage == 1 else \
        ["loss", "text/rewards/margin", "noise/rewards/margin", "text/rewards/accuracy", "noise/rewards/accuracy"]
    return _finish(model, processor, out_dir, spec, keys + ["lr"], settings)


def run_conversation_sft(model_dir: str | os.PathLike, conversations: Sequence[Conversation], dataset: CocoDataset,
                         out_dir: str | os.PathLike, spec: TuningSpec, *, device: str = "cpu", resume: bool = False,
                         allow_changes: bool = False, tag: str = "conversations") -> Path:
    """``spec.steps`` steps of next-token loss on assistant turns from ``model_dir``; returns
    ``OUT/model`` (adapters merged, HF layout). ``tag`` is recorded in ``OUT/recipe.json``;
    ``resume`` / ``allow_changes`` as in :func:`run_preference_stage`."""
    out_dir = Path(out_dir)
    settings = stage_settings(spec, conversations, sft=tag, **{"from": str(model_dir)})
    if _finished(out_dir, settings, resume, allow_changes):
        return out_dir / "model"
    model, processor, bank, encoder = _prepare(model_dir, dataset, spec, device)
    batches = SupervisedBatches(list(conversations), encoder, bank, spec.batch_size, spec.seed)
    train_sft(model, batches, spec.loop(), out_dir, resume=resume, allow_changes=allow_changes, settings=settings)
    return _finish(model, processor, out_dir, spec, ["loss", "lr"], settings)


def run_sft_control(model_dir: str | os.PathLike, records: list[PreferenceRecord], dataset: CocoDataset,
                    out_dir: str | os.PathLike, spec: TuningSpec, *, device: str = "cpu", resume: bool = False,
                    allow_changes: bool = False) -> Path:
    """The control every remedy must beat: continued SFT on the chosen answers, same data and budget."""
    conversations = [Conversation(r.image, (Turn(r.prompt, r.chosen),), r.id) for r in records]
    return run_conversation_sft(model_dir, conversations, dataset, out_dir, spec, device=device, resume=resume,
                                allow_changes=allow_changes, tag="control: sft-on-chosen")
