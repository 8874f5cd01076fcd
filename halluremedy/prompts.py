"""The prompts halluremedy speaks, in one place, in LLaVA-1.5's conversation format.

LLaVA-1.5 (and its -hf checkpoints) take ``"USER: <image>\\n{question} ASSISTANT:"`` and answer with
``" {answer}</s>"``. The tiny scene-world model is trained on exactly the same layout, so a prompt
built here means the same thing to both.
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"

CAPTION_PROMPT = "Describe this image."  # POVID's CHAIR evaluation prompt
DETAILED_CAPTION_PROMPT = "Please describe this image in detail."  # the usual CHAIR protocol
POPE_SUFFIX = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's short-answer suffix
EXPLAIN_PROMPT = "Explain why."  # REVERIE turn 2 (positive rationale)
EXPLAIN_WRONG_PROMPT = "Explain why this answer is wrong: {answer}"  # REVERIE turn 2 (negative)


def article(word: str) -> str:
    """'a' or 'an' for a noun phrase (by its first letter, as POPE's template does)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def pope_question(obj: str) -> str:
    """POPE's existence question for one object name."""
    return f"Is there {article(obj)} {obj} in the image?"


def user_turn(question: str, *, with_image: bool) -> str:
    """One user turn; the first turn of a conversation carries the image placeholder."""
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:" if with_image else f"USER: {question} ASSISTANT:"


def llava_prompt(question: str) -> str:
    """Single-turn prompt: ``USER: <image>\\n{question} ASSISTANT:``."""
    return user_turn(question, with_image=True)


def prompt_words() -> list[str]:
    """Every fixed prompt string, for building a word-level tokenizer that covers them."""
    return [user_turn("", with_image=True), CAPTION_PROMPT, DETAILED_CAPTION_PROMPT, POPE_SUFFIX,
            pope_question("object"), EXPLAIN_PROMPT, EXPLAIN_WRONG_PROMPT.format(answer="")]
