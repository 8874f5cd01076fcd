"""Conversations in LLaVA's JSON format, and their encoding into token ids with assistant-only labels.

A record (one JSONL line, or one element of a LLaVA JSON list)::

    {"id": "...", "image": "000001.png",
     "conversations": [{"from": "human", "value": "<image>\\nDescribe this image."},
                       {"from": "gpt", "value": "a red circle."}, ...]}

Turns alternate human/gpt; the first human turn carries ``<image>``. Encoding follows LLaVA-1.5:
``<s>USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>``, with ``<image>``
expanded to the model's ``image_seq_length`` placeholder ids and the loss on assistant tokens
(answers and their ``</s>``) only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from halluremedy.data.coco import DatasetError, read_text, write_text_atomic
from halluremedy.prompts import IMAGE_TOKEN, user_turn

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Turn:
    user: str  # question text without the image placeholder
    assistant: str


@dataclass(frozen=True)
class Conversation:
    """One training sample: an image and the turns about it."""

    image: str  # file name inside the dataset's image folder
    turns: tuple[Turn, ...]
    id: str = ""

    def to_llava(self) -> dict:
        conv = []
        for k, t in enumerate(self.turns):
            conv.append({"from": "human", "value": f"{IMAGE_TOKEN}\n{t.user}" if k == 0 else t.user})
            conv.append({"from": "gpt", "value": t.assistant})
        return {"id": self.id, "image": self.image, "conversations": conv}


def parse_turns(conv: object, where: str, field: str = "conversations") -> tuple[Turn, ...]:
    """Validate a LLaVA ``conversations`` list; errors name ``where`` (file:line) and the field."""
    if not isinstance(conv, list) or not conv or len(conv) % 2:
        raise DatasetError(f"{where}: field '{field}' must be a non-empty list of human/gpt turn pairs")
    turns = []
    for k in range(0, len(conv), 2):
        h, g = conv[k], conv[k + 1]
        for j, (msg, role) in enumerate(((h, "human"), (g, "gpt"))):
            if not isinstance(msg, dict) or msg.get("from") != role or not isinstance(msg.get("value"), str):
                raise DatasetError(f"{where}: field '{field}[{k + j}]' must be {{'from': '{role}', 'value': str}}")
        question, answer = h["value"], g["value"].strip()
        if (IMAGE_TOKEN in question) != (k == 0):
            raise DatasetError(f"{where}: field '{field}[{k}]': '{IMAGE_TOKEN}' must appear in the first human turn only")
        question = question.replace(IMAGE_TOKEN, "").strip()
        if not question or not answer:
            raise DatasetError(f"{where}: field '{field}[{k}]' has an empty question or answer")
        turns.append(Turn(question, answer))
    return tuple(turns)


def parse_conversation(record: object, where: str) -> Conversation:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: record must be a JSON object")
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise DatasetError(f"{where}: field 'image' must be a non-empty string")
    return Conversation(image, parse_turns(record.get("conversations"), where), str(record.get("id", "")))


def read_jsonl(path: str | os.PathLike, text: str | None = None) -> Iterator[tuple[str, object]]:
    """Yield ``("file:line", record)`` of a JSONL file (or of its ``text``, already read); the file is
    read as strict UTF-8 (:func:`~halluremedy.data.coco.read_text`), and malformed JSON raises
    DatasetError naming file and line."""
    path = Path(path)
    text = read_text(path) if text is None else text
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 and friends may sit inside strings
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}: malformed JSON: {e.msg} (column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # an integer of > 4300 digits, nesting too deep
            raise DatasetError(f"{path}:{n}: unreadable JSON: {str(e) or type(e).__name__}") from None
        yield f"{path}:{n}", record


def load_conversations(path: str | os.PathLike) -> list[Conversation]:
    return [parse_conversation(rec, where) for where, rec in read_jsonl(path)]


def write_jsonl_atomic(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Write records one JSON object per line, through a temporary file and a rename."""
    def write(f) -> None:
        for r in records:
            f.write(json.dumps(r) + "\n")

    write_text_atomic(path, write)


class ConversationEncoder:
    """Turns conversations into ``(input_ids, labels)`` for one tokenizer and image geometry."""

    def __init__(self, tokenizer, image_seq_length: int, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.image_seq_length = image_seq_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.max_length = max_length

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prompt_ids(self, question: str, *, first: bool) -> list[int]:
        """Ids of one user turn; the first turn starts with ``<s>`` and carries the expanded image."""
        ids = ([self.tokenizer.bos_token_id] if first else []) + self._ids(user_turn(question, with_image=first))
        if first:
            k = ids.index(self.image_token_id)
            ids[k:k + 1] = [self.image_token_id] * self.image_seq_length
        return ids

    def response_ids(self, answer: str) -> list[int]:
        """Ids of one assistant answer, ending in ``</s>``."""
        return self._ids(" " + answer) + [self.tokenizer.eos_token_id]

    def encode(self, turns: Sequence[Turn], where: str = "") -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        for k, t in enumerate(turns):
            p = self.prompt_ids(t.user, first=k == 0)
            r = self.response_ids(t.assistant)
            ids += p + r
            labels += [IGNORE_INDEX] * len(p) + r
        self.check_length(len(ids), where)
        return ids, labels

    def check_length(self, n: int, where: str) -> None:
        """Refuse sequences over ``max_length`` (the model's context): image tokens are never truncated
        silently."""
        if self.max_length is not None and n > self.max_length:
            raise DatasetError(f"{where}: {n} tokens (including {self.image_seq_length} image tokens) > the model's "
                               f"{self.max_length}-token context (its max_position_embeddings); no option raises it: "
                               f"shorten the record or use a model with a longer context")


def pad_right(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """(B, T) long tensor, each row right-padded with ``value`` to the longest."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out
