"""Hallucination metrics: CHAIR (captions) and POPE (yes/no object questions).

Pure functions over text and COCO-format annotations; no model code. See :mod:`.chair` and
:mod:`.pope` for the exact definitions, :mod:`.chair_reference` for the original CHAIR parser
(``compat="reference"``) and :mod:`.score_captions` for scoring captions made anywhere.
"""

from halluremedy.eval.chair import (
    COMPAT_MODES,
    CaptionChair,
    ChairResult,
    Mention,
    ObjectVocabulary,
    chair,
    chair_signature,
    class_row,
    coco_vocabulary,
    ground_truth_objects,
)
from halluremedy.eval.pope import POPE_SETTINGS, PopeQuestion, build_pope, parse_pope_answer, pope_metrics
from halluremedy.eval.text import singularize, tokenize

__all__ = [
    "COMPAT_MODES",
    "POPE_SETTINGS",
    "CaptionChair",
    "ChairResult",
    "Mention",
    "ObjectVocabulary",
    "PopeQuestion",
    "build_pope",
    "chair",
    "chair_signature",
    "class_row",
    "coco_vocabulary",
    "ground_truth_objects",
    "parse_pope_answer",
    "pope_metrics",
    "singularize",
    "tokenize",
]
