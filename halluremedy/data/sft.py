"""Instruction data for the base model: captions and yes/no existence questions from COCO-format data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from halluremedy.data.coco import CocoDataset
from halluremedy.data.conversation import Conversation, Turn
from halluremedy.prompts import CAPTION_PROMPT, DETAILED_CAPTION_PROMPT, POPE_SUFFIX, pope_question

# The scene world writes caption k of an image in style k % 2: short, then detailed.
CAPTION_PROMPTS = (CAPTION_PROMPT, DETAILED_CAPTION_PROMPT)


def existence_turn(category: str, present: bool) -> Turn:
    """POPE-style question with LLaVA-1.5's short-answer suffix, answered Yes/No."""
    return Turn(pope_question(category) + POPE_SUFFIX, "Yes" if present else "No")


def caption_and_qa_conversations(dataset: CocoDataset, *, seed: int, questions_per_image: int = 2,
                                 caption_prompts: Sequence[str] = CAPTION_PROMPTS) -> list[Conversation]:
    """Per image: one sample per reference caption (caption k answers ``caption_prompts[k % len]``)
    and ``questions_per_image`` existence questions, alternating a present class (Yes) and an
    absent one (No), classes drawn uniformly with a generator seeded by ``(seed, image index)``."""
    out = []
    for i, im in enumerate(dataset.images):
        rng = np.random.default_rng([seed, i])
        for k, cap in enumerate(im.captions):
            out.append(Conversation(im.file_name, (Turn(caption_prompts[k % len(caption_prompts)], cap),),
                                    id=f"{im.image_id}/caption{k}"))
        present = sorted(im.categories)
        absent = [c for c in dataset.categories if c not in im.categories]
        for q in range(questions_per_image):
            pool, is_present = (present, True) if q % 2 == 0 else (absent, False)
            if pool:
                cat = pool[rng.integers(len(pool))]
                out.append(Conversation(im.file_name, (existence_turn(cat, is_present),),
                                        id=f"{im.image_id}/exists{q}"))
    return out
