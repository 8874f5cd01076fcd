"""REVERIE's reflective records generated from annotations (the format and its training layouts:
:mod:`halluremedy.data.reflective`).

:func:`scene_rationales` writes rationales from annotations (objects, colours, sizes, box
relations) using only words the scene-world model already knows (scene words, prompt words,
Yes/No): no "because" or "not", so a base model trained before this module exists can learn them.
:func:`scene_reflective_records` draws the questions with
:func:`~halluremedy.generate.targeted.sample_questions` and gives each its two rationales.
"""

from __future__ import annotations

from collections.abc import Sequence

from halluremedy.data.coco import CocoDataset, CocoImage, CocoObject
from halluremedy.data.reflective import ReflectiveRecord
from halluremedy.generate.targeted import (
    RELATION_PHRASES,
    GroundedQuestion,
    InstructionMix,
    TargetWeights,
    reference_phrase,
    sample_questions,
)
from halluremedy.prompts import article

__all__ = ["REFLECTIVE_MIX", "reflective_records", "scene_rationales", "scene_reflective_records"]


def _describe(o: CocoObject) -> str:
    """``"a small red circle"`` from the annotation (attributes it lacks are left out)."""
    words = " ".join(w for w in (o.attributes.get("size"), o.attributes.get("color"), o.category) if w)
    return f"{article(words)} {words}"


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _instances(image: CocoImage, category: str) -> list[CocoObject]:
    return [o for o in image.objects if o.category == category]


def scene_rationales(q: GroundedQuestion) -> tuple[str, str]:
    """``(rationale, wrong_rationale)`` for a yes/no grounded question, from its image's annotations.

    Raises ValueError for a caption question (it has no confusing answer).
    """
    image, c = q.image, q.category
    wrong = f"the answer {('no' if q.answer == 'Yes' else 'yes')} is wrong."
    if q.kind == "existence_present":
        here = f"there is {_join([_describe(o) for o in _instances(image, c)])} in the image."
        return here, f"{wrong} {here}"
    if q.kind == "existence_absent":
        others = _join([_describe(o) for o in image.objects])
        rationale = f"there is no {c} in the image. there is {others}."
        if q.trigger is not None:
            return rationale, f"{wrong} there is {_describe(q.trigger)} in the image and no {c}."
        return rationale, f"{wrong} there is no {c} in the image."
    if q.kind == "attribute":
        instances = _instances(image, c)
        if q.answer == "Yes":
            having = [o for o in instances if o.attributes.get(q.attribute) == q.value]
            rationale = f"there is {_join([_describe(o) for o in having])} in the image."
            return rationale, (f"{wrong} the {c} is {q.value}." if len(instances) == 1 else f"{wrong} {rationale}")
        rationale = f"there is {_join([_describe(o) for o in instances])} in the image and no {q.value} {c}."
        if len(instances) == 1:
            return rationale, f"{wrong} the {c} is {instances[0].attributes[q.attribute]}."
        return rationale, f"{wrong} there is no {q.value} {c} in the image."
    if q.kind == "relation":
        fact = (f"the {reference_phrase(image, q.subject)} is {RELATION_PHRASES[q.true_relation]} the "
                f"{reference_phrase(image, q.other)}.")
        return fact, f"{wrong} {fact}"
    raise ValueError(f"no rationale for a {q.kind!r} question")


def reflective_records(questions: Sequence[GroundedQuestion]) -> list[ReflectiveRecord]:
    """One record per yes/no grounded question (caption questions are skipped)."""
    out = []
    for q in questions:
        if q.kind == "caption":
            continue
        rationale, wrong = scene_rationales(q)
        out.append(ReflectiveRecord(q.id, q.image.file_name, q.question, q.answer,
                                    "No" if q.answer == "Yes" else "Yes", rationale, wrong, q.kind))
    return out


# REVERIE's question kinds: existence, attributes, relations; no captions (they have no confusing answer).
REFLECTIVE_MIX = InstructionMix(existence_absent=0.35, existence_present=0.35, attribute=0.2, relation=0.1, caption=0.0)


def scene_reflective_records(dataset: CocoDataset, n: int, *, seed: int, weights: TargetWeights | None = None,
                             mix: InstructionMix = REFLECTIVE_MIX) -> list[ReflectiveRecord]:
    """``n`` reflective records from ``dataset``'s annotations: questions drawn by
    :func:`~halluremedy.generate.targeted.sample_questions` (``weights``: a ``TargetWeights``,
    uniform when None). A ``mix`` with a caption share yields fewer than ``n`` records."""
    weights = weights or TargetWeights.uniform(dataset.categories)
    return reflective_records(sample_questions(dataset, weights, n, seed=seed, mix=mix))
