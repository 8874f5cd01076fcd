"""Reflective instruction tuning (REVERIE): answers with the reasons they are right, and why the
confusing answer is wrong.

A :class:`ReflectiveRecord` holds a question about an image, the correct answer, a confusing
answer, a rationale for the correct answer and a rationale for why the confusing one is wrong.
One JSON object per line (``write_reflective`` / ``load_reflective``)::

    {"id": "...", "image": "train_000042.png", "kind": "existence_absent",
     "question": "Is there a crescent in the image?\\nAnswer the question using a single word or phrase.",
     "answer": "No", "confusing_answer": "Yes",
     "rationale": "there is no crescent in the image. there is a large yellow star.",
     "wrong_rationale": "the answer yes is wrong. there is a large yellow star in the image and no crescent."}

:func:`reflective_conversations` lays records out for ``train_sft`` (loss on assistant turns only),
the positive and negative rationale as *separate* samples (mixing both in one conversation
scored lower in REVERIE)::

    "answer":   [question -> answer]
    "positive": [question -> answer, "Explain why." -> rationale]
    "negative": [question -> answer, "Explain why this answer is wrong: {confusing}" -> wrong_rationale]
    "both":     the positive and the negative sample of every record

:func:`scene_rationales` writes rationales from annotations (objects, colours, sizes, box
relations) using only words the scene-world model already knows (scene words, prompt words,
Yes/No): no "because" or "not", so a base model trained before this module exists can learn them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from halluremedy.data.coco import CocoDataset, CocoImage, CocoObject, DatasetError
from halluremedy.data.conversation import (
    Conversation,
    Turn,
    read_jsonl,
    write_jsonl_atomic,
)
from halluremedy.generate.targeted import (
    RELATION_PHRASES,
    GroundedQuestion,
    InstructionMix,
    TargetWeights,
    reference_phrase,
    sample_questions,
)
from halluremedy.prompts import EXPLAIN_PROMPT, EXPLAIN_WRONG_PROMPT, article

__all__ = ["LAYOUTS", "REFLECTIVE_MIX", "ReflectiveRecord", "load_reflective", "reflective_conversations",
           "reflective_records", "scene_rationales", "scene_reflective_records", "write_reflective"]

LAYOUTS: tuple[str, ...] = ("answer", "positive", "negative", "both")


@dataclass(frozen=True)
class ReflectiveRecord:
    """One REVERIE instruction; ``question`` is the user turn as asked (without ``<image>``)."""

    id: str
    image: str  # file name inside the dataset's image folder
    question: str
    answer: str
    confusing_answer: str
    rationale: str  # why ``answer`` is right
    wrong_rationale: str  # why ``confusing_answer`` is wrong
    kind: str = ""

    def __post_init__(self) -> None:
        for f in ("image", "question", "answer", "confusing_answer", "rationale", "wrong_rationale"):
            value = getattr(self, f)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"ReflectiveRecord {self.id!r}: field '{f}' must be a non-empty string")
        if self.answer.strip().lower() == self.confusing_answer.strip().lower():
            raise ValueError(f"ReflectiveRecord {self.id!r}: confusing_answer equals answer ({self.answer!r})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: object, where: str = "") -> ReflectiveRecord:
        """Validate a raw JSON record; errors name ``where`` (file:line) and the field."""
        if not isinstance(record, dict):
            raise DatasetError(f"{where}: record must be a JSON object")
        values = {}
        for f in fields(cls):
            value = record.get(f.name, "" if f.name in ("id", "kind") else None)
            if not isinstance(value, str):
                raise DatasetError(f"{where}: field '{f.name}' must be a string")
            values[f.name] = value
        try:
            return cls(**values)
        except ValueError as e:
            raise DatasetError(f"{where}: {e}") from None


def write_reflective(path: str | os.PathLike, records: Sequence[ReflectiveRecord]) -> None:
    write_jsonl_atomic(Path(path), [r.to_dict() for r in records])


def load_reflective(path: str | os.PathLike) -> list[ReflectiveRecord]:
    return [ReflectiveRecord.from_dict(rec, where) for where, rec in read_jsonl(path)]


def reflective_conversations(records: Sequence[ReflectiveRecord], layout: str = "both") -> list[Conversation]:
    """Training samples in ``layout`` (see the module docstring); ``"both"`` gives 2 per record,
    positive then negative, ids suffixed ``/why`` and ``/wrong``."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown reflective layout {layout!r}; known: {list(LAYOUTS)}")
    out = []
    for r in records:
        first = Turn(r.question, r.answer)
        if layout == "answer":
            out.append(Conversation(r.image, (first,), r.id))
        if layout in ("positive", "both"):
            out.append(Conversation(r.image, (first, Turn(EXPLAIN_PROMPT, r.rationale)), f"{r.id}/why"))
        if layout in ("negative", "both"):
            wrong = Turn(EXPLAIN_WRONG_PROMPT.format(answer=r.confusing_answer), r.wrong_rationale)
            out.append(Conversation(r.image, (first, wrong), f"{r.id}/wrong"))
    return out


# --- rationales for the scene world --------------------------------------------------------------

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
