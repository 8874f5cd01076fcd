"""Hallucination metrics: CHAIR (captions) and POPE (yes/no object questions).

Pure functions over text and COCO-format annotations; no model code. See :mod:`.chair` and
:mod:`.pope` for the exact definitions.
"""

from halluremedy.eval.chair import (
    CaptionChair,
    ChairResult,
    Mention,
    ObjectVocabulary,
    chair,
    class_row,
    ground_truth_objects,
)
from halluremedy.eval.pope import POPE_SETTINGS, PopeQuestion, build_pope, parse_pope_answer, pope_metrics
from halluremedy.eval.text import singularize, tokenize

__all__ = [
    "POPE_SETTINGS",
    "CaptionChair",
    "ChairResult",
    "Mention",
    "ObjectVocabulary",
    "PopeQuestion",
    "build_pope",
    "chair",
    "class_row",
    "ground_truth_objects",
    "parse_pope_answer",
    "pope_metrics",
    "singularize",
    "tokenize",
]
