"""POVID preference pairs: the ground-truth caption preferred, its hallucinated edit dispreferred."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from halluremedy.data.coco import CocoDataset, CocoImage
from halluremedy.data.preference import PreferenceRecord
from halluremedy.data.sft import CAPTION_PROMPTS
from halluremedy.eval.chair import ObjectVocabulary
from halluremedy.generate.injector import EDIT_KINDS, CaptionEditor, EditKind

__all__ = ["PairGeneration", "build_preference_pairs", "caption_prompt_by_index", "generate_preference_pairs"]


def caption_prompt_by_index(index: int, caption: str) -> str:
    """The prompt base-model SFT pairs with reference caption ``index`` (``CAPTION_PROMPTS[index % 2]``:
    the scene world's short, then detailed caption)."""
    return CAPTION_PROMPTS[index % len(CAPTION_PROMPTS)]


@dataclass
class PairGeneration:
    """The pairs made from a dataset, with how each considered caption fared."""

    records: list[PreferenceRecord] = field(default_factory=list)
    edited: Counter[str] = field(default_factory=Counter)  # kind -> captions edited with it
    no_edit: int = 0  # captions no kind could edit
    unfaithful: int = 0  # captions skipped because they name an object the annotations lack
    captions: int = 0  # captions considered

    def summary(self) -> str:
        """One line per outcome, e.g. for the CLI."""
        lines = [f"{self.captions} captions -> {len(self.records)} pairs"]
        lines += [f"  {kind}: {self.edited[kind]}" for kind in sorted(self.edited)]
        lines.append(f"  no possible edit: {self.no_edit}")
        lines.append(f"  skipped, caption names an absent object: {self.unfaithful}")
        return "\n".join(lines)


def _names_absent_object(image: CocoImage, caption: str, vocabulary: ObjectVocabulary) -> bool:
    return any(m.category not in image.categories for m in vocabulary.extract_mentions(caption))


def generate_preference_pairs(dataset: CocoDataset, editor: CaptionEditor, *, seed: int,
                              kinds: Sequence[EditKind] = EDIT_KINDS, per_image: int | None = None,
                              prompt_for_caption: Callable[[int, str], str] = caption_prompt_by_index,
                              faithful_only: bool = True, progress: bool = False) -> PairGeneration:
    """One pair per edited reference caption, with the outcome counts.

    For each image, its captions are visited in a random order and the first ``per_image`` that
    some kind can edit (all, when None) become pairs; for each caption the kinds are tried in a
    random order and the first edit that succeeds is the rejected answer. Randomness comes from a
    generator seeded with ``(seed, image index)``, so an image's pairs do not depend on the others.

    ``faithful_only``: skip reference captions that name an object the annotations lack (the
    scene world's noisy captions): the preferred answer is meant to be correct.
    Pair ``id`` is ``"{image_id}/caption{k}"``, ``source`` is ``"{editor.name}:{kind}"`` and
    ``prompt`` is ``prompt_for_caption(k, caption)``.
    """
    if unknown := [k for k in kinds if k not in EDIT_KINDS]:
        raise ValueError(f"unknown edit kinds {unknown}; known: {list(EDIT_KINDS)}")
    if not kinds:
        raise ValueError("kinds must not be empty")
    if per_image is not None and per_image < 1:
        raise ValueError(f"per_image must be >= 1 or None, got {per_image}")
    vocabulary = ObjectVocabulary.from_synonyms(dataset.synonyms) if dataset.synonyms else ObjectVocabulary.coco()
    result = PairGeneration()
    for i, image in enumerate(tqdm(dataset.images, desc="hallucination edits", unit="img", disable=not progress)):
        rng = np.random.default_rng([seed, i])
        made = 0
        for k in (int(k) for k in rng.permutation(len(image.captions))):
            if per_image is not None and made == per_image:
                break
            caption = image.captions[k]
            result.captions += 1
            if faithful_only and _names_absent_object(image, caption, vocabulary):
                result.unfaithful += 1
                continue
            for kind in (kinds[j] for j in rng.permutation(len(kinds))):
                rejected = editor.edit(image, caption, kind, rng)
                if rejected is not None:
                    result.records.append(PreferenceRecord(
                        id=f"{image.image_id}/caption{k}", image=image.file_name,
                        prompt=prompt_for_caption(k, caption), chosen=caption, rejected=(rejected,),
                        source=f"{editor.name}:{kind}"))
                    result.edited[kind] += 1
                    made += 1
                    break
            else:
                result.no_edit += 1
    return result


def build_preference_pairs(dataset: CocoDataset, editor: CaptionEditor, *, seed: int,
                           kinds: Sequence[EditKind] = EDIT_KINDS, per_image: int | None = None,
                           prompt_for_caption: Callable[[int, str], str] = caption_prompt_by_index,
                           faithful_only: bool = True) -> list[PreferenceRecord]:
    """The preference records of :func:`generate_preference_pairs` (which also counts outcomes)."""
    return generate_preference_pairs(dataset, editor, seed=seed, kinds=kinds, per_image=per_image,
                                     prompt_for_caption=prompt_for_caption, faithful_only=faithful_only).records
