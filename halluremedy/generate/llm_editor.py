"""Hallucination injection by a language model behind an OpenAI-compatible chat endpoint.

POVID had GPT-4V rewrite ground-truth answers to contain hallucinations and never released its
prompt; :data:`SYSTEM_PROMPT` and :func:`edit_messages` are this project's own. The model sees the
caption, the objects the annotations say are in the image, the kind of hallucination wanted and,
for co-occurrence edits, absent objects that often appear with the present ones; it answers with
the rewritten caption, or ``NONE`` when the kind does not fit the caption.

Transport: ``POST {base_url}/chat/completions`` with ``model``, ``messages``, ``temperature``,
``max_tokens`` and a ``seed`` drawn from the caller's generator (for servers that honour it). The
API key, if any, is read from the environment variable the config names. Connection errors,
timeouts, HTTP 429 and 5xx are retried with exponential backoff; other failures and invalid
answers (empty, or the caption unchanged) raise :class:`LLMEditError` naming the image.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from halluremedy.data.coco import CocoImage
from halluremedy.generate.cooccurrence import CooccurrenceStats
from halluremedy.generate.injector import EDIT_KINDS, EditKind

__all__ = ["KIND_INSTRUCTIONS", "NO_EDIT_ANSWER", "SYSTEM_PROMPT", "LLMEditError", "LLMEditor", "LLMEditorConfig",
           "edit_messages"]

NO_EDIT_ANSWER = "NONE"

SYSTEM_PROMPT = (
    "You write training data that teaches vision-language models not to hallucinate. You are given a "
    "caption that is correct for an image and the objects that are really in the image. Rewrite the caption "
    "so that it contains exactly one hallucination of the requested kind and is otherwise unchanged: keep "
    "its wording, sentence structure, length, style, punctuation and capitalisation, and change only the "
    "words the hallucination needs. The hallucination must be plausible (something a careless describer "
    "might believe) and must be false for this image. Answer with the rewritten caption only, without "
    f"quotes or comments. If the caption has no place for this kind of hallucination, answer {NO_EDIT_ANSWER}."
)

KIND_INSTRUCTIONS: dict[str, str] = {
    "cooccur": (
        "Co-occurring object: mention one object that is NOT in the image but often appears together with "
        "objects that are (a fork next to a knife), either by adding it in the caption's own phrasing or by "
        "replacing one mentioned object with it. Never name an object of the list above."
    ),
    "attribute": (
        "Attribute: change one attribute the caption gives an object (its colour, size, or another visible "
        "property) to a value that no object of that kind in the image has."
    ),
    "relation": (
        "Relation: change one spatial or logical relation the caption states between objects into a false "
        "one, e.g. its opposite (left of -> right of, above -> below, in front of -> behind)."
    ),
}


class LLMEditError(RuntimeError):
    """The endpoint failed or answered unusably; the message names the image and the edit kind."""


@dataclass(frozen=True)
class LLMEditorConfig:
    """Where and how to ask. ``api_key_env``: name of the environment variable holding the key
    (None: send no key, as local servers expect). ``max_retries``: retries after the first attempt;
    retry k waits ``backoff_s * 2**k`` seconds."""

    base_url: str
    model: str
    api_key_env: str | None = None
    temperature: float = 0.7
    max_tokens: int = 512
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    suggested_objects: int = 5  # absent co-occurring objects listed for "cooccur" edits

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLMEditorConfig.base_url={self.base_url!r}: must start with http:// or https://")
        if not self.model:
            raise ValueError("LLMEditorConfig.model must be non-empty")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.max_tokens < 1:
            raise ValueError(f"LLMEditorConfig: need timeout_s > 0, max_retries >= 0, backoff_s >= 0, "
                             f"max_tokens >= 1; got {self.timeout_s}, {self.max_retries}, {self.backoff_s}, "
                             f"{self.max_tokens}")


def _describe_objects(image: CocoImage) -> str:
    """``- 2 x circle (red, small)`` lines, identical objects counted together."""
    counts = Counter((o.category, ", ".join(o.attributes[k] for k in sorted(o.attributes) if k in ("color", "size")))
                     for o in image.objects)
    lines = [f"- {n} x {category}" + (f" ({attributes})" if attributes else "")
             for (category, attributes), n in sorted(counts.items())]
    return "\n".join(lines) if lines else "- (no annotated objects)"


def edit_messages(image: CocoImage, caption: str, kind: EditKind, suggestions: Sequence[str] = ()) -> list[dict]:
    """The chat messages asking for one ``kind`` hallucination in ``caption``."""
    parts = [f"Objects in the image:\n{_describe_objects(image)}"]
    if suggestions:
        parts.append("Absent objects that often appear with these: " + ", ".join(suggestions))
    parts.append(f"Kind of hallucination: {KIND_INSTRUCTIONS[kind]}")
    parts.append(f"Caption: {caption}")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


class LLMEditor:
    """:class:`~halluremedy.generate.injector.CaptionEditor` backed by a chat-completions endpoint.

    ``cooccurrence``: when given, "cooccur" requests list the absent classes most likely to
    co-occur with the present ones.
    """

    name = "llm"

    def __init__(self, config: LLMEditorConfig, cooccurrence: CooccurrenceStats | None = None) -> None:
        self.config = config
        self.cooccurrence = cooccurrence
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if config.api_key_env is not None:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"LLMEditorConfig.api_key_env names {config.api_key_env!r}, which is not set")
            self._headers["Authorization"] = f"Bearer {key}"

    def suggestions(self, image: CocoImage) -> list[str]:
        """Absent classes by their highest ``P(absent | present)`` over the present classes."""
        if self.cooccurrence is None:
            return []
        present = image.categories
        absent = [c for c in self.cooccurrence.categories if c not in present]
        best: dict[str, float] = {}
        for category in sorted(present & set(self.cooccurrence.categories)):
            for partner, p in self.cooccurrence.partners(category, among=absent):
                best[partner] = max(best.get(partner, 0.0), p)
        ranked = [c for c in self.cooccurrence.categories if c in best]
        ranked.sort(key=lambda c: -best[c])  # stable: ties keep category order
        return ranked[:self.config.suggested_objects]

    def edit(self, image: CocoImage, caption: str, kind: EditKind, rng: np.random.Generator) -> str | None:
        """The model's rewrite of ``caption``; None when it answers ``NONE``."""
        if kind not in EDIT_KINDS:
            raise ValueError(f"unknown edit kind {kind!r}; known: {list(EDIT_KINDS)}")
        where = f"image {image.image_id} ({image.file_name}), {kind} edit of {caption!r}"
        messages = edit_messages(image, caption, kind, self.suggestions(image) if kind == "cooccur" else ())
        body = {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens, "seed": int(rng.integers(2**31))}
        answer = self._complete(body, where).strip()
        if len(answer) >= 2 and answer[0] == answer[-1] and answer[0] in "\"'":
            answer = answer[1:-1].strip()
        if answer == NO_EDIT_ANSWER:
            return None
        if not answer:
            raise LLMEditError(f"{where}: the model answered with an empty caption")
        if " ".join(answer.split()) == " ".join(caption.split()):
            raise LLMEditError(f"{where}: the model answered with the caption unchanged")
        return answer

    def _complete(self, body: dict, where: str) -> str:
        """POST the request, retrying transient failures; the first choice's message content."""
        data = json.dumps(body).encode("utf-8")
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            request = urllib.request.Request(self._url, data=data, headers=self._headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                failure = f"HTTP {e.code} from {self._url}: {detail}"
                if e.code != 429 and e.code < 500:
                    raise LLMEditError(f"{where}: {failure}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                failure = f"request to {self._url} failed: {getattr(e, 'reason', e)}"
            if attempt + 1 < attempts:
                time.sleep(self.config.backoff_s * 2**attempt)
        else:
            raise LLMEditError(f"{where}: {failure} (after {attempts} attempts)")
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMEditError(f"{where}: malformed response from {self._url}: {payload[:300]!r}") from None
        if not isinstance(content, str):
            raise LLMEditError(f"{where}: response content is {type(content).__name__}, not text")
        return content
