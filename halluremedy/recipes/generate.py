"""Preference pairs from a COCO-format split's reference captions, e.g.

    halluremedy generate --data data/scenes --split train --out pairs.jsonl --seed 0
    halluremedy generate --data data/coco --split train2014 --out pairs.jsonl --seed 0 \\
        --editor llm --base-url http://127.0.0.1:8000/v1 --model NAME [--api-key-env OPENAI_API_KEY]

(``python -m halluremedy.generate`` is the same command.) Prints how many captions each kind edited,
how many no kind could edit, and how many were skipped because they name an object the annotations lack.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from halluremedy.config import check, check_choices, check_range, option, required
from halluremedy.data.coco import CocoDataset
from halluremedy.data.preference import write_preferences
from halluremedy.data.sft import CAPTION_PROMPTS
from halluremedy.generate.cooccurrence import CooccurrenceStats
from halluremedy.generate.injector import (
    COOCCUR_MODES,
    EDIT_KINDS,
    CaptionEditor,
    CooccurMode,
    EditKind,
    RuleBasedEditor,
)
from halluremedy.generate.llm_editor import LLMEditor, LLMEditorConfig
from halluremedy.generate.pairs import PairGeneration, caption_prompt_by_index, generate_preference_pairs

log = logging.getLogger("halluremedy.generate")
FIXED_PROMPTS = {"short": CAPTION_PROMPTS[0], "detailed": CAPTION_PROMPTS[1]}


@dataclass(frozen=True)
class GenerateConfig:
    data: str = required("dataset root (annotations/ and SPLIT/)")
    split: str = required("split whose captions are edited")
    out: str = required("output JSONL")
    seed: int = required("seed of the edits")
    format: Literal["povid", "trl"] = option("povid", "povid: LLaVA conversations + rejected_conversations; trl: "
                                             "{prompt, chosen, rejected, images}")
    kinds: tuple[EditKind, ...] = option(EDIT_KINDS, "hallucination kinds the rejected captions may use")
    per_image: int | None = option(None, "at most this many pairs per image; none: all")
    prompt: Literal["by-index", "short", "detailed"] = option(
        "by-index", "by-index: caption k answers the SFT prompt k % 2 (scene world); or one fixed prompt")
    keep_unfaithful: bool = option(False, "also use reference captions that name an object the annotations lack")
    editor: Literal["rule", "llm"] = option("rule", "rule-based edits, or a language model behind an "
                                            "OpenAI-compatible endpoint")
    cooccur_modes: tuple[CooccurMode, ...] = option(COOCCUR_MODES, "rule editor: add an absent object, replace a "
                                                    "present one, or both")
    base_url: str = option("", "llm editor: OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    model: str = option("", "llm editor: model name")
    api_key_env: str = option("", "llm editor: environment variable holding the API key (empty: send none)")
    temperature: float = option(0.7, "llm editor: sampling temperature")
    timeout: float = option(60.0, "llm editor: seconds per request")
    max_retries: int = option(3, "llm editor: retries after the first attempt")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_choices(self)
        check(bool(self.kinds), "kinds", "must name at least one", self.kinds)
        check(bool(self.cooccur_modes), "cooccur_modes", "must name at least one", self.cooccur_modes)
        check_range(self, "seed", ge=0)
        if self.per_image is not None:
            check_range(self, "per_image", ge=1)
        for name in ("base_url", "model"):
            check(self.editor != "llm" or bool(getattr(self, name)), name, "is needed by --editor llm",
                  getattr(self, name))

    def caption_editor(self, dataset: CocoDataset) -> CaptionEditor:
        if self.editor == "rule":
            return RuleBasedEditor.for_dataset(dataset, cooccur_modes=list(self.cooccur_modes))
        config = LLMEditorConfig(self.base_url, self.model, api_key_env=self.api_key_env or None,
                                 temperature=self.temperature, timeout_s=self.timeout, max_retries=self.max_retries)
        return LLMEditor(config, CooccurrenceStats.from_dataset(dataset))


def generate(cfg: GenerateConfig) -> PairGeneration:
    """Write the pairs to ``cfg.out``; returns the generation with its outcome counts."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dataset = CocoDataset.load(cfg.data, cfg.split, require_captions=True)
    prompt_for_caption = (caption_prompt_by_index if cfg.prompt == "by-index"
                          else lambda index, caption: FIXED_PROMPTS[cfg.prompt])
    result = generate_preference_pairs(dataset, cfg.caption_editor(dataset), seed=cfg.seed, kinds=list(cfg.kinds),
                                       per_image=cfg.per_image, prompt_for_caption=prompt_for_caption,
                                       faithful_only=not cfg.keep_unfaithful, progress=cfg.progress)
    write_preferences(Path(cfg.out), result.records, fmt=cfg.format)
    log.info("%s/%s: %s\nwrote %s (%s format)", cfg.data, cfg.split, result.summary(), cfg.out, cfg.format)
    return result
