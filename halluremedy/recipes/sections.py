"""The typed config sections every recipe composes, defined once: the model, the data, the
preference pairs, LoRA, the preference objective, the training loop, the evaluation and the run
directory.

A recipe config holds them as fields (``lora: LoraSection = section(LoraSection(lora_r=16))``) and
:func:`~halluremedy.config.parse_config` makes every option of every section one flag and one flat
YAML key. A section's class defaults are the package's own (``TuningSpec``, ``PreferenceObjective``);
a recipe that wants others says so in its ``section(...)`` default, where ``--help`` and the shipped
``configs/`` show it. The package's dataclasses are built from sections by :func:`assemble`, which
takes every field it needs by name, so no option is copied by hand from one layer to another.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal, TypeVar

from halluremedy.config import check, check_choices, check_device, check_range, option
from halluremedy.errors import ConfigError
from halluremedy.generate.injector import COOCCUR_MODES, EDIT_KINDS, CooccurMode, EditKind
from halluremedy.pipeline import BASE_KINDS, DEFAULT_BASE_OUT, BaseTrainSpec, SceneDataSpec, format_cycles, parse_cycles
from halluremedy.train.dpo import NOISE_POSITION_RULES, PreferenceObjective
from halluremedy.train.stages import TuningSpec

T = TypeVar("T")
NoisePosition = Literal[("all", *NOISE_POSITION_RULES)]
DEFAULT_BASE_CYCLES = tuple(format_cycles(BaseTrainSpec.cycles).split(","))


def check_cycles(cfg, name: str) -> None:
    """``cfg.name``: a non-empty sequence of ``STEPS:LR:SCENES[:NOISED]`` cycles."""
    try:
        parse_cycles(",".join(getattr(cfg, name)))
    except ValueError as e:
        raise ConfigError(f"option '--{name.replace('_', '-')}': {e}") from None


@dataclass(frozen=True)
class ModelSection:
    """The model: a local LLaVA directory or the embedded tiny scene model, and how it runs."""

    model: str = option("", "base LLaVA directory; empty: the embedded tiny scene model of kind --base")
    base: Literal[BASE_KINDS] = option(
        "llava-like", "embedded default only: llava-like (pretrained frozen tower + LLaVA-1.5's stages: sees "
                      "well, hallucinates from its language prior, as LLaVA-1.5 does) or perception-limited "
                      "(tower trained with the LM: misnames what it sees); both shipped")
    base_out: str = option("", "embedded default only: where the tiny base is copied (or trained); empty: "
                               + " or ".join(f"{v} ({k})" for k, v in DEFAULT_BASE_OUT.items()))
    base_cycles: tuple[str, ...] = option(DEFAULT_BASE_CYCLES, "--base perception-limited only: SFT cycles "
                                          "STEPS:LR:SCENES[:NOISED] of the tiny base (another recipe than the "
                                          "shipped one trains it)")
    device: str = option("cpu", "cpu | cuda | cuda:N")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (large models)")
    decoder_kernels: tuple[Literal["liger", "compile"], ...] = option(
        (), "CUDA only: liger (Liger-Kernel's RMSNorm / SwiGLU / RoPE in the decoder) and/or compile "
            "(torch.compile per decoder layer); none: plain torch")

    def __post_init__(self) -> None:
        check_choices(self)
        check_cycles(self, "base_cycles")
        check(self.base == "perception-limited" or self.base_cycles == DEFAULT_BASE_CYCLES, "base_cycles",
              "applies to --base perception-limited (the llava-like base's recipe: scripts/train_llava_base.py, "
              "then --model)", self.base_cycles)
        check_device(self, here=False)  # a GPU config stays valid on any machine; the recipe checks it before a run
        check(not self.decoder_kernels or self.device.startswith("cuda"), "decoder_kernels",
              "needs --device cuda (Triton / Inductor kernels)", self.decoder_kernels)


@dataclass(frozen=True)
class DataSection:
    """The images and annotations: a COCO-format root, or the embedded scene world."""

    data: str = option("runs/scenes", "COCO-format root holding the images (scene world generated if absent)")
    split: str = option("train", "training split (what the pairs or generated data are made from)")
    eval_split: str = option("val", "held-out split for CHAIR / POPE")
    scene_train_images: int = option(SceneDataSpec.n_train, "embedded default only: scene-world training images")
    scene_heldout_images: int = option(SceneDataSpec.n_heldout, "embedded default only: held-out images")

    def __post_init__(self) -> None:
        for name in ("scene_train_images", "scene_heldout_images"):
            check_range(self, name, ge=1)


@dataclass(frozen=True)
class PairsSection:
    """The preference pairs: a file, or rule-based hallucination edits of the training captions."""

    pairs: str = option("", "preference JSON(L): POVID's LLaVA conversations or TRL-style {prompt, chosen, "
                        "rejected, images}; empty: rule-based hallucination edits of SPLIT's captions")
    edit_kinds: tuple[EditKind, ...] = option(EDIT_KINDS, "rule-based edits the rejected answers may use "
                                              "(without --pairs)")
    cooccur_modes: tuple[CooccurMode, ...] = option(COOCCUR_MODES, "how co-occurrence edits bring in the absent "
                                                    "object: add (a new mention) and/or replace (a mentioned "
                                                    "object's noun)")
    skip_invalid: bool = option(False, "skip malformed preference records (counted) instead of stopping")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("edit_kinds", "cooccur_modes"):
            check(bool(getattr(self, name)), name, "must name at least one", getattr(self, name))


@dataclass(frozen=True)
class LoraSection:
    """LoRA adapters on the decoder's linear layers (or a full fine-tune)."""

    lora: bool = option(TuningSpec.lora, "train LoRA adapters (else a full fine-tune)")
    lora_r: int = option(TuningSpec.lora_r, "LoRA rank")
    lora_alpha: int = option(TuningSpec.lora_alpha, "LoRA alpha")
    lora_dropout: float = option(TuningSpec.lora_dropout, "LoRA dropout")

    def __post_init__(self) -> None:
        if self.lora:
            check_range(self, "lora_r", ge=1)
            check_range(self, "lora_alpha", gt=0)
            check_range(self, "lora_dropout", ge=0, lt=1)


@dataclass(frozen=True)
class ObjectiveSection:
    """What a preference step optimises: the DPO loss, stage 2's noise term, the reference model."""

    loss_type: Literal["sigmoid", "ipo", "hinge"] = option(PreferenceObjective.loss_type, "stage-1 loss")
    beta: float = option(PreferenceObjective.beta, "DPO beta")
    label_smoothing: float = option(PreferenceObjective.label_smoothing, "cDPO label smoothing (sigmoid only)")
    nll_alpha: float = option(PreferenceObjective.nll_alpha, "RPO term: + alpha * mean token NLL of the chosen "
                              "answer (0 = off)")
    noise_step: int = option(PreferenceObjective.noise_step, "diffusion step k of the noised image (sigmoid "
                             "schedule, T=1000)")
    noise_positions: tuple[NoisePosition, ...] = option(
        (PreferenceObjective.noise_positions,), "stage-2 noise term: all (POVID) | seen (only y+ positions whose "
        "clean-image argmax is the y+ token) | novel (only positions whose noised argmax is a token y+ never "
        "contains) | present (only where it names no class annotated in the image); rules combine, e.g. seen "
        "novel; the rest cancel")
    weight_text: float = option(PreferenceObjective.weight_text, "stage-2 weight of the text-hallucination DPO term")
    weight_noise: float = option(PreferenceObjective.weight_noise, "stage-2 weight of the noise-triggered DPO term")
    reference: Literal["adapter", "copy", "precomputed"] = option(
        "adapter", "reference log-probs: adapter (the policy with LoRA disabled) | copy | precomputed")

    def __post_init__(self) -> None:
        check_choices(self)
        check_range(self, "beta", gt=0)
        check_range(self, "label_smoothing", ge=0, le=0.5)
        check(not self.label_smoothing or self.loss_type == "sigmoid", "label_smoothing",
              f"applies to --loss-type sigmoid only, not {self.loss_type!r}", self.label_smoothing)
        for name in ("nll_alpha", "weight_text", "weight_noise"):
            check_range(self, name, ge=0)
        check_range(self, "noise_step", ge=0, lt=1000)
        positions = self.noise_positions
        check(bool(positions) and ("all" not in positions or len(positions) == 1), "noise_positions",
              f"must be all, or distinct rules of {', '.join(NOISE_POSITION_RULES)}", positions)


@dataclass(frozen=True)
class LoopSection:
    """The training loop: batch, accumulation, peak learning rate (cosine, 3% warmup). The seed is the
    recipe's: it also draws data and evaluation samples, and a multi-seed recipe sets it per run."""

    batch_size: int = option(TuningSpec.batch_size, "records per micro-batch")
    grad_accum: int = option(TuningSpec.grad_accum, "micro-batches per optimiser step")
    lr: float = option(TuningSpec.lr, "peak learning rate (cosine, 3% warmup)")

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum"):
            check_range(self, name, ge=1)
        check_range(self, "lr", gt=0)


@dataclass(frozen=True)
class EvalSection:
    """The evaluation on the held-out split: CHAIR (greedy and sampled captions) and POPE."""

    eval_images: int = option(500, "held-out images for CHAIR and POPE (0: skip evaluation)")

    def __post_init__(self) -> None:
        check_range(self, "eval_images", ge=0)


@dataclass(frozen=True)
class RunSection:
    """The run directory, and whether to continue an earlier run in it."""

    out: str = option("runs/out", "output directory")
    resume: bool = option(False, "reuse finished stages and continue an interrupted one (same settings only)")
    resume_with_changes: bool = option(False, "with --resume: also continue a run made with other settings (the new "
                                       "learning rate and schedule length apply from the next step)")

    def __post_init__(self) -> None:
        check(self.resume or not self.resume_with_changes, "resume_with_changes", "goes with --resume",
              self.resume_with_changes)


def assemble(target: type[T], *sections: object, **fixed: object) -> T:
    """A ``target`` (``TuningSpec``, ``PreferenceObjective``, ...) from the options of ``sections`` that
    its fields are named after, plus ``fixed``; a sequence option becomes the comma-joined text a ``str``
    field holds (``("seen", "novel")`` -> ``"seen,novel"``). Other options are not the target's."""
    hints = typing.get_type_hints(target)
    wanted = {f.name for f in dataclasses.fields(target)} - set(fixed)
    values: dict[str, object] = {}
    for part in sections:
        for f in dataclasses.fields(part):
            if f.name in wanted:
                if f.name in values:
                    raise TypeError(f"{target.__name__}.{f.name}: given by two sections")
                value = getattr(part, f.name)
                values[f.name] = ",".join(map(str, value)) if isinstance(value, tuple) and hints[f.name] is str \
                    else value
    return target(**values, **fixed)
