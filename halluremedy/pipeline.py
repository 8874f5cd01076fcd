"""The embedded default world end to end: scene data on disk and a tiny base model that hallucinates.

Recipes call these so that ``python scripts/train_dpo.py`` on a fresh machine builds whatever is
missing (and reuses whatever is already there) before it trains.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from halluremedy.data.coco import CocoDataset
from halluremedy.data.conversation import ConversationEncoder
from halluremedy.data.images import ImageBank
from halluremedy.data.scenes import SceneConfig, make_dataset, scene_text_vocabulary
from halluremedy.data.sft import caption_and_qa_conversations
from halluremedy.models.llava import TinyLlavaSpec, build_tiny_llava, image_seq_length, load_model, save_model
from halluremedy.prompts import prompt_words
from halluremedy.train.loop import LoopConfig, plot_metrics
from halluremedy.train.sft import SupervisedBatches, train_sft

TRAIN_SPLIT, HELDOUT_SPLIT = "train", "val"
# The default tiny base, trained once by ``python scripts/train_sft.py`` (BaseTrainSpec defaults on the
# default SceneDataSpec data) and shipped so the default POVID run needs no hour of base training.
SHIPPED_BASE = Path(__file__).parent / "assets" / "scene_base"


@dataclass(frozen=True)
class SceneDataSpec:
    """The default scene-world data: train and held-out splits from different seeds."""

    n_train: int = 4000
    n_heldout: int = 1500  # POPE needs images with >= 3 classes: ~44% of scenes, so ~660 here
    train_seed: int = 1
    heldout_seed: int = 2
    caption_noise: float = 0.5  # share of eligible captions (trigger present, partner absent); train only; the held-out references are clean (CHAIR reads them)
    image_size: int = 32


def ensure_scene_data(root: str | os.PathLike, spec: SceneDataSpec = SceneDataSpec()) -> tuple[CocoDataset, CocoDataset]:
    """Load the train / held-out scene splits under ``root``, generating any that is missing or
    holds a different number of images than ``spec`` asks for."""
    root = Path(root)
    cfg = SceneConfig(image_size=spec.image_size)
    out = []
    for split, n, seed, noise in ((TRAIN_SPLIT, spec.n_train, spec.train_seed, spec.caption_noise),
                                  (HELDOUT_SPLIT, spec.n_heldout, spec.heldout_seed, 0.0)):
        existing = CocoDataset.load(root, split) if (root / "annotations" / f"instances_{split}.json").exists() else None
        if existing is not None and len(existing) == n:
            out.append(existing)
        else:  # absent, or another size: image i depends only on (seed, i), so regenerating extends or cuts it
            out.append(make_dataset(root, split, n, seed, cfg, caption_noise=noise))
    return out[0], out[1]


def scene_model_texts() -> list[str]:
    """Every text the tiny model must tokenize: scene words, prompts, answers."""
    return scene_text_vocabulary() + prompt_words() + ["Yes", "No"]


def parse_cycles(text: str) -> tuple[tuple[int, float], ...]:
    """``"3000:1.5e-3,8000:1e-3"`` -> ``((3000, 0.0015), (8000, 0.001))`` (steps, peak lr per cycle)."""
    try:
        cycles = tuple((int(steps), float(lr)) for steps, lr in (part.split(":") for part in text.split(",")))
    except ValueError:
        raise ValueError(f"cycles must look like 'STEPS:LR,STEPS:LR,...'; got {text!r}") from None
    if not cycles or any(steps < 1 or lr <= 0 for steps, lr in cycles):
        raise ValueError(f"every cycle needs steps >= 1 and lr > 0; got {text!r}")
    return cycles


def format_cycles(cycles: tuple[tuple[int, float], ...]) -> str:
    return ",".join(f"{steps}:{lr:g}" for steps, lr in cycles)


@dataclass(frozen=True)
class BaseTrainSpec:
    """SFT recipe of the tiny base: cosine cycles with warm restarts.

    Each ``(steps, peak lr)`` cycle is a cosine schedule with ``warmup_ratio`` warmup and a fresh
    AdamW, continuing from the previous cycle's model; every cycle walks the same seeded data order.
    Restarts matter here: the model first learns colours, and shape-dependent answers only leave
    their plateau after ~10k steps (see ``assets/scene_base/README.md``).
    """

    cycles: tuple[tuple[int, float], ...] = ((3000, 1.5e-3), (8000, 1e-3), (12000, 1e-3))
    batch_size: int = 32
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    seed: int = 0
    questions_per_image: int = 2

    @property
    def steps(self) -> int:
        return sum(steps for steps, _ in self.cycles)


def train_base_model(train: CocoDataset, out_dir: str | os.PathLike, spec: BaseTrainSpec = BaseTrainSpec(),
                     model_spec: TinyLlavaSpec = TinyLlavaSpec(), *, init: str | os.PathLike | None = None,
                     resume: bool = False) -> Path:
    """SFT a tiny LLaVA on captions + existence QA (fresh, or continuing from ``init``); saves
    ``OUT/model`` (HF layout). Cycle ``i`` of several works in ``OUT/cycle{i}`` and leaves its model
    there, so with ``resume`` an interrupted recipe skips finished cycles and resumes the one it
    stopped in."""
    out_dir = Path(out_dir)
    torch.manual_seed(spec.seed)
    if init:
        model, processor = load_model(init)
    else:
        model, processor = build_tiny_llava(model_spec, scene_model_texts(), seed=spec.seed)
    conversations = caption_and_qa_conversations(train, seed=spec.seed, questions_per_image=spec.questions_per_image)
    bank = ImageBank(train, processor.image_processor, progress=True)
    encoder = ConversationEncoder(processor.tokenizer, image_seq_length(model), max_length=model_spec.max_positions)
    batches = SupervisedBatches(conversations, encoder, bank, spec.batch_size, seed=spec.seed)
    for i, (steps, lr) in enumerate(spec.cycles):
        cycle_dir = out_dir / f"cycle{i}" if len(spec.cycles) > 1 else out_dir
        if resume and (cycle_dir / "model" / "config.json").exists():
            model, processor = load_model(cycle_dir / "model")
            continue
        loop = LoopConfig(steps=steps, lr=lr, warmup_ratio=spec.warmup_ratio, weight_decay=spec.weight_decay,
                          log_every=25, save_every=250)
        train_sft(model, batches, loop, cycle_dir, resume=resume)
        plot_metrics(cycle_dir, ["loss", "lr", "grad_norm"])
        save_model(model, processor, cycle_dir / "model")
    if len(spec.cycles) > 1:
        save_model(model, processor, out_dir / "model")
    return out_dir / "model"


def ensure_base_model(train: CocoDataset, out_dir: str | os.PathLike, spec: BaseTrainSpec = BaseTrainSpec()) -> Path:
    """Return ``OUT/model``; if absent, copy the shipped base when ``spec`` is the default recipe
    (``SHIPPED_BASE``, trained by exactly that recipe on the default scene data), else train it
    (resuming an interrupted run)."""
    path = Path(out_dir) / "model"
    if (path / "config.json").exists():
        return path
    if spec == BaseTrainSpec() and (SHIPPED_BASE / "config.json").exists():
        shutil.copytree(SHIPPED_BASE, path)
        return path
    return train_base_model(train, out_dir, spec, resume=True)


def resolve_model_and_data(model: str, data: str, split: str, eval_split: str, *, base_out: str | os.PathLike,
                           base_cycles: str, scene_train_images: int, scene_heldout_images: int
                           ) -> tuple[Path, CocoDataset, CocoDataset]:
    """``(base model dir, training split, held-out split)`` for a recipe.

    With ``model``: that checkpoint and the COCO-format ``data`` splits ``split`` / ``eval_split``.
    Without: the embedded default, i.e. the scene world under ``data`` (generated if absent; its own
    ``train`` / ``val`` splits) and the tiny base in ``base_out`` (shipped or trained; one base for
    every recipe seed, since the seeds vary the remedy, not the model it starts from).
    """
    if model:
        return Path(model), CocoDataset.load(data, split), CocoDataset.load(data, eval_split)
    train, heldout = ensure_scene_data(data, SceneDataSpec(n_train=scene_train_images, n_heldout=scene_heldout_images))
    return ensure_base_model(train, base_out, BaseTrainSpec(cycles=parse_cycles(base_cycles))), train, heldout
