"""The embedded default world end to end: scene data on disk and a tiny base model that hallucinates.

Recipes call these so that ``python scripts/train_dpo.py`` on a fresh machine builds whatever is
missing (and reuses whatever is already there) before it trains.

The embedded default owns its scene world: it generates (and resizes, in place) scene splits only
in a root that is new, empty, or marked as made by it (``ROOT/.halluremedy-scene-world``), and
refuses any other folder, so a user's own data is never rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor

from halluremedy.config import check_model_dir
from halluremedy.data.coco import CocoDataset, write_json_atomic
from halluremedy.data.conversation import ConversationEncoder
from halluremedy.data.images import ImageBank
from halluremedy.data.scenes import SceneConfig, make_dataset, scene_text_vocabulary, scene_world_record
from halluremedy.data.sft import caption_and_qa_conversations
from halluremedy.errors import ConfigError
from halluremedy.models.llava import TinyLlavaSpec, build_tiny_llava, image_seq_length, load_model
from halluremedy.prompts import prompt_words
from halluremedy.train.distributed import current_shard, save_model_on_main
from halluremedy.train.llava_recipe import LlavaRecipeSpec, train_llava_base
from halluremedy.train.loop import LoopConfig, plot_metrics
from halluremedy.train.sft import NoiseAugment, SupervisedBatches, train_sft

TRAIN_SPLIT, HELDOUT_SPLIT, BASE_SPLIT = "train", "val", "base"
SCENE_MARKER = ".halluremedy-scene-world"  # in a scene root made by the embedded default
# The default tiny base, trained once by ``python scripts/train_sft.py`` (BaseTrainSpec defaults on the
# default SceneDataSpec data) and shipped so the default POVID run needs no 1.3 h of base training.
SHIPPED_BASE = Path(__file__).parent / "assets" / "scene_base"
# The LLaVA-like base (pretrained frozen tower, LLaVA-1.5's stages; it hallucinates from its language
# prior as LLaVA-1.5 does), made by ``python scripts/train_llava_base.py`` (LlavaRecipeSpec defaults).
SHIPPED_LLAVA_BASE = Path(__file__).parent / "assets" / "scene_base_llava"
BASE_KINDS = ("llava-like", "perception-limited")
DEFAULT_BASE_OUT = {"llava-like": "runs/base_llava", "perception-limited": "runs/base"}


@dataclass(frozen=True)
class SceneDataSpec:
    """The default scene-world data: train and held-out splits from different seeds."""

    n_train: int = 4000
    n_heldout: int = 1500  # POPE needs images with >= 3 classes: ~44% of scenes, so ~660 here
    train_seed: int = 1
    heldout_seed: int = 2
    caption_noise: float = 0.5  # share of eligible captions (trigger present, partner absent); train only; the held-out references are clean (CHAIR reads them)
    image_size: int = 32
    # the order detailed captions name objects in: POVID's preferred answers must share their base's
    # (scene_data_spec gives each base kind's)
    detailed_order: str = "random"

    def scene_config(self) -> SceneConfig:
        return SceneConfig(image_size=self.image_size, detailed_order=self.detailed_order)


def claim_scene_root(root: str | os.PathLike, option: str = "") -> Path:
    """``root`` as the embedded default's scene root: one it made (marker file), or a new or empty
    folder, which gets the marker. Any other folder is refused (ConfigError, naming ``option`` when
    given): generating there would rewrite someone's annotations."""
    root = Path(root)
    marker = root / SCENE_MARKER
    if marker.is_file():
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(
            f"{f'option {option!r}: ' if option else ''}{root} is not a scene world made by the embedded default "
            f"(no {SCENE_MARKER} in it), and not empty; the "
            f"embedded default (no --model) generates and resizes its scene splits in its own folder only, never in "
            f"one of yours: pass --model BASE to train on this data, or a new or empty folder as --data (a scene world "
            f"made by an older halluremedy: create {marker} to let it be reused)")
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"made_by": "halluremedy embedded default",
                               "note": "scene splits here are generated and resized in place"})
    return root


def ensure_scene_split(root: str | os.PathLike, split: str, n: int, seed: int, caption_noise: float,
                       cfg: SceneConfig = SceneConfig(image_size=SceneDataSpec.image_size)) -> CocoDataset:
    """Load scene split ``split`` under ``root``; generate it when missing, of another size (image i
    depends only on ``(seed, i)``, so regenerating extends or cuts it) or made from another world,
    seed or caption noise (its recorded ``info["scene_world"]``; a split with no record is remade).
    ``root`` must be the embedded default's own (:func:`claim_scene_root`)."""
    root = claim_scene_root(root)
    if (root / "annotations" / f"instances_{split}.json").exists():
        existing = CocoDataset.load(root, split)
        if len(existing) == n and existing.info.get("scene_world") == scene_world_record(seed, cfg, caption_noise):
            return existing
    return make_dataset(root, split, n, seed, cfg, caption_noise=caption_noise)


def ensure_scene_data(root: str | os.PathLike, spec: SceneDataSpec = SceneDataSpec()) -> tuple[CocoDataset, CocoDataset]:
    """The train / held-out scene splits under ``root`` (generated where missing, resized or remade)."""
    cfg = spec.scene_config()
    return (ensure_scene_split(root, TRAIN_SPLIT, spec.n_train, spec.train_seed, spec.caption_noise, cfg),
            ensure_scene_split(root, HELDOUT_SPLIT, spec.n_heldout, spec.heldout_seed, 0.0, cfg))


def ensure_base_split(root: str | os.PathLike, n: int, spec: SceneDataSpec = SceneDataSpec()) -> CocoDataset:
    """The base model's SFT scenes: the first ``n`` images of the training split's scene stream (same
    seed and caption noise), so the training split is its first ``spec.n_train`` images."""
    return ensure_scene_split(root, BASE_SPLIT, n, spec.train_seed, spec.caption_noise, spec.scene_config())


def scene_data_spec(base: str, n_train: int = SceneDataSpec.n_train,
                    n_heldout: int = SceneDataSpec.n_heldout) -> SceneDataSpec:
    """The default world's data for base kind ``base``, in the caption order that base learnt: the
    LLaVA-like recipe's (``LlavaRecipeSpec.detailed_order``), or random for the perception-limited one."""
    if base not in BASE_KINDS:
        raise ConfigError(f"option '--base': one of {', '.join(BASE_KINDS)}, got {base!r}")
    order = LlavaRecipeSpec.detailed_order if base == "llava-like" else "random"
    return SceneDataSpec(n_train=n_train, n_heldout=n_heldout, detailed_order=order)


def scene_model_texts() -> list[str]:
    """Every text the tiny model must tokenize: scene words, prompts, answers."""
    return scene_text_vocabulary() + prompt_words() + ["Yes", "No"]


# (optimiser steps, peak lr, scenes: the first N of the base split, share of images noised)
Cycle = tuple[int, float, int, float]


def _cycle(steps: int, lr: float, n: int, noised: float = 0.0) -> Cycle:
    if steps < 1 or lr <= 0 or n < 1 or not 0.0 <= noised <= 1.0:
        raise ValueError(f"every cycle needs steps >= 1, lr > 0, scenes >= 1 and a noised share in [0, 1]; "
                         f"got {(steps, lr, n, noised)}")
    return int(steps), float(lr), int(n), float(noised)


def parse_cycles(text: str) -> tuple[Cycle, ...]:
    """``"3000:1.5e-3:4000,1500:3e-4:40000:0.5"`` -> ``((3000, 0.0015, 4000, 0.0), (1500, 0.0003, 40000, 0.5))``."""
    try:
        parts = [part.split(":") for part in text.split(",")]
        if not text or any(len(p) not in (3, 4) for p in parts):
            raise ValueError
        values = [(int(p[0]), float(p[1]), int(p[2]), float(p[3]) if len(p) == 4 else 0.0) for p in parts]
    except ValueError:
        raise ValueError(f"cycles must look like 'STEPS:LR:SCENES[:NOISED],...'; got {text!r}") from None
    return tuple(_cycle(*v) for v in values)


def format_cycles(cycles: tuple[Cycle, ...]) -> str:
    return ",".join(f"{steps}:{lr:g}:{n}" + (f":{noised:g}" if noised else "")
                    for steps, lr, n, noised in (_cycle(*c) for c in cycles))


@dataclass(frozen=True)
class BaseTrainSpec:
    """SFT recipe of the tiny base: cosine cycles with warm restarts.

    Each ``(steps, peak lr, scenes, noised)`` cycle is a cosine schedule with ``warmup_ratio``
    warmup and a fresh AdamW on the captions + QA of the first ``scenes`` base-split images,
    continuing from the previous cycle's model; a ``noised`` share of its images is diffusion-noised
    (:class:`~halluremedy.train.sft.NoiseAugment`, steps below ``noise_max_step``). A 3-tuple cycle
    means ``noised = 0``. On the 4000 training scenes alone the model memorises them (train loss
    0.2) yet barely tells shapes apart on new ones; the 40000-scene cycle is what teaches it shape
    (see ``assets/scene_base/README.md``).
    """

    cycles: tuple[Cycle, ...] = ((3000, 1.5e-3, 4000), (8000, 1e-3, 4000), (12000, 1e-3, 4000), (6000, 5e-4, 40000))
    batch_size: int = 32
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    seed: int = 0
    questions_per_image: int = 2
    noise_max_step: int = 700

    def __post_init__(self) -> None:
        object.__setattr__(self, "cycles", tuple(_cycle(*c) for c in self.cycles))

    @property
    def steps(self) -> int:
        return sum(c[0] for c in self.cycles)

    @property
    def scenes(self) -> int:
        return max(c[2] for c in self.cycles)


def train_base_model(scenes: CocoDataset, out_dir: str | os.PathLike, spec: BaseTrainSpec = BaseTrainSpec(),
                     model_spec: TinyLlavaSpec = TinyLlavaSpec(), *, init: str | os.PathLike | None = None,
                     resume: bool = False, allow_changes: bool = False) -> Path:
    """SFT a tiny LLaVA on captions + existence QA of ``scenes`` (at least ``spec.scenes`` images),
    fresh or continuing from ``init``; saves ``OUT/model`` (HF layout). Cycle ``i`` of several works
    in ``OUT/cycle{i}`` and leaves its model there, so with ``resume`` an interrupted recipe skips
    finished cycles and resumes the one it stopped in (``allow_changes``: see
    :func:`~halluremedy.train.loop.train_loop`). Under torchrun the ranks share each cycle (FSDP2)."""
    out_dir = Path(out_dir)
    torch.manual_seed(spec.seed)
    if init:
        model, processor = load_model(init)
    else:
        model, processor = build_tiny_llava(model_spec, scene_model_texts(), seed=spec.seed)
    bank = ImageBank(scenes.head(spec.scenes), processor.image_processor, progress=True)
    encoder = ConversationEncoder(processor.tokenizer, image_seq_length(model), max_length=model_spec.max_positions)
    for i, (steps, lr, n, noised) in enumerate(spec.cycles):
        cycle_dir = out_dir / f"cycle{i}" if len(spec.cycles) > 1 else out_dir
        if resume and (cycle_dir / "model" / "config.json").exists():
            model, processor = load_model(cycle_dir / "model")
            continue
        conversations = caption_and_qa_conversations(scenes.head(n), seed=spec.seed,
                                                     questions_per_image=spec.questions_per_image)
        noise = NoiseAugment(noised, spec.noise_max_step, spec.seed) if noised else None
        batches = SupervisedBatches(conversations, encoder, bank, spec.batch_size, seed=spec.seed, noise=noise)
        loop = LoopConfig(steps=steps, lr=lr, warmup_ratio=spec.warmup_ratio, weight_decay=spec.weight_decay,
                          log_every=25, save_every=250)
        train_sft(model, batches, loop, cycle_dir, resume=resume, allow_changes=allow_changes)
        save_model_on_main(model, processor, cycle_dir / "model")
        if current_shard().is_main:
            plot_metrics(cycle_dir, ["loss", "lr", "grad_norm"])
        if current_shard().world > 1:  # the next cycle shards a fresh copy (FSDP2 shards a model once)
            model, processor = load_model(cycle_dir / "model")
    if len(spec.cycles) > 1:
        save_model_on_main(model, processor, out_dir / "model")
    return out_dir / "model"


def ensure_base_model(data_root: str | os.PathLike, out_dir: str | os.PathLike, spec: BaseTrainSpec = BaseTrainSpec(),
                      data: SceneDataSpec = SceneDataSpec()) -> Path:
    """Return ``OUT/model``; if absent, copy the shipped base when ``spec`` and the scene stream of
    ``data`` are the defaults (``SHIPPED_BASE`` was trained by exactly that recipe), else train it on the base split
    under ``data_root`` (generated if needed; an interrupted run resumes).

    ``OUT/base_recipe.json`` records the recipe; a model in ``OUT`` made by another recipe (or with
    no record) is refused rather than silently reused.
    """
    out, path = Path(out_dir), Path(out_dir) / "model"
    recipe = {**asdict(spec), "cycles": format_cycles(spec.cycles), "scene_seed": data.train_seed,
              "caption_noise": data.caption_noise, "image_size": data.image_size}
    record = out / "base_recipe.json"
    if _reuse_or_refuse(out, recipe, "--base-out"):
        return path
    default_scenes = (data.train_seed, data.caption_noise, data.image_size) == \
        (SceneDataSpec.train_seed, SceneDataSpec.caption_noise, SceneDataSpec.image_size)
    if spec == BaseTrainSpec() and default_scenes and (SHIPPED_BASE / "config.json").exists():
        shutil.copytree(SHIPPED_BASE, path)
    else:
        train_base_model(ensure_base_split(data_root, spec.scenes, data), out_dir, spec, resume=True)
    write_json_atomic(record, recipe, indent=2)
    return path


def _reuse_or_refuse(out: Path, recipe: dict, option: str) -> bool:
    """True if ``OUT/model`` exists and ``OUT/base_recipe.json`` records ``recipe``; a model made by
    another (or an unrecorded) recipe is refused rather than silently reused."""
    if not (out / "model" / "config.json").exists():
        return False
    record = out / "base_recipe.json"
    found = json.loads(record.read_text()) if record.exists() else None
    if found != recipe:
        raise ConfigError(f"{out / 'model'}: a base model made by "
                          f"{'another recipe: ' + str(found) if found else 'an unrecorded recipe'}, not the one "
                          f"asked for ({recipe}); remove it or pick another base directory ({option})")
    return True


def ensure_llava_base(out_dir: str | os.PathLike, spec: LlavaRecipeSpec = LlavaRecipeSpec()) -> Path:
    """Return ``OUT/model``, the LLaVA-like base; if absent, copy the shipped one when ``spec`` is the
    default (``SHIPPED_LLAVA_BASE`` was made by exactly that recipe), else run the recipe (tower
    pretraining included; ~15-20 min on one CPU thread). ``OUT/base_recipe.json`` records the recipe."""
    out = Path(out_dir)
    recipe = {"kind": "llava-like", **asdict(spec)}
    recipe = json.loads(json.dumps(recipe))  # tuples as lists, as the record reads back
    if _reuse_or_refuse(out, recipe, "--base-out"):
        return out / "model"
    if spec == LlavaRecipeSpec() and (SHIPPED_LLAVA_BASE / "config.json").exists():
        shutil.copytree(SHIPPED_LLAVA_BASE, out / "model")
    else:
        train_llava_base(spec, out, texts=scene_model_texts())
    write_json_atomic(out / "base_recipe.json", recipe, indent=2)
    return out / "model"


def resolve_data(model: str, data: str, split: str, eval_split: str, *, base: str, scene_train_images: int,
                 scene_heldout_images: int, verify: bool = True) -> tuple[CocoDataset, CocoDataset]:
    """``(training split, held-out split)`` for a recipe, every image of both opened and decoded
    (``verify``) so that a broken file stops the run before its first step.

    With ``model``: the COCO-format ``data`` splits ``split`` / ``eval_split``. Without: the embedded
    default's scene world under ``data`` (its own root, generated if absent; its splits ``train`` and
    ``val`` only: any other ``split`` / ``eval_split`` is refused, as is a ``data`` folder it did not make),
    as base kind ``base`` reads it (:func:`scene_data_spec`).
    """
    if model:
        check_model_dir(model)
        train, heldout = CocoDataset.load(data, split), CocoDataset.load(data, eval_split)
    else:
        for option, value, own in (("--split", split, TRAIN_SPLIT), ("--eval-split", eval_split, HELDOUT_SPLIT)):
            if value != own:
                raise ConfigError(f"option '{option}': the embedded default (no --model) trains on its own scene "
                                  f"splits '{TRAIN_SPLIT}' and '{HELDOUT_SPLIT}', got {value!r}; to use a split of "
                                  f"your own data pass --model BASE --data ROOT")
        scene_spec = scene_data_spec(base, scene_train_images, scene_heldout_images)
        claim_scene_root(data, "--data")
        train, heldout = ensure_scene_data(data, scene_spec)
    if verify:
        for dataset in (train, heldout):
            dataset.verify_images(progress=True)
    return train, heldout


def resolve_base(model: str, data: str, *, base: str, base_out: str | os.PathLike, base_cycles: str,
                 scene_train_images: int, scene_heldout_images: int) -> Path:
    """The base model directory: ``model``, or (embedded default) the tiny base of kind ``base`` in
    ``base_out`` (empty: ``DEFAULT_BASE_OUT[base]``): "llava-like" is the shipped LLaVA-like base
    (:func:`ensure_llava_base`), "perception-limited" the first tiny base, shipped or trained by SFT
    cycles ``base_cycles`` on the scene world under ``data`` (:func:`ensure_base_model`). One base for
    every recipe seed, since the seeds vary the remedy, not the model it starts from."""
    if model:
        return check_model_dir(model)
    scene_spec = scene_data_spec(base, scene_train_images, scene_heldout_images)
    out = base_out or DEFAULT_BASE_OUT[base]
    if base == "llava-like":
        return ensure_llava_base(out)
    return ensure_base_model(data, out, BaseTrainSpec(cycles=parse_cycles(base_cycles)), scene_spec)


def resolve_model_and_data(model: str, data: str, split: str, eval_split: str, *, base: str,
                           base_out: str | os.PathLike, base_cycles: str, scene_train_images: int,
                           scene_heldout_images: int) -> tuple[Path, CocoDataset, CocoDataset]:
    """``(base model dir, training split, held-out split)``: :func:`resolve_data`, then :func:`resolve_base`."""
    train, heldout = resolve_data(model, data, split, eval_split, base=base, scene_train_images=scene_train_images,
                                  scene_heldout_images=scene_heldout_images)
    base_dir = resolve_base(model, data, base=base, base_out=base_out, base_cycles=base_cycles,
                            scene_train_images=scene_train_images, scene_heldout_images=scene_heldout_images)
    return base_dir, train, heldout


def record_encoder(model_dir: str | os.PathLike) -> ConversationEncoder:
    """The encoder training will build for ``model_dir`` (its tokenizer, image tokens per image and
    context length), read from its config and processor files without loading the weights, to check
    records against the model before any training."""
    path = check_model_dir(model_dir)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    return ConversationEncoder(processor.tokenizer, int(config.image_seq_length),
                               max_length=config.text_config.max_position_embeddings)
