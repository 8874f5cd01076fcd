"""Reflective instruction tuning (REVERIE), the data format: answers with the reasons they are
right, and why the confusing answer is wrong.

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

The records are generated from annotations by :mod:`halluremedy.generate.reflective`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from halluremedy.data.coco import DatasetError
from halluremedy.data.conversation import (
    Conversation,
    Turn,
    read_jsonl,
    write_jsonl_atomic,
)
from halluremedy.prompts import EXPLAIN_PROMPT, EXPLAIN_WRONG_PROMPT

__all__ = ["LAYOUTS", "ReflectiveRecord", "load_reflective", "reflective_conversations", "write_reflective"]

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
