"""Preference records for DPO: one image, one question, a preferred answer and dispreferred ones.

Two on-disk formats are read, one record per JSONL line or one element of a JSON list file (the way
LLaVA and POVID ship their data); the format is detected per record.

POVID (a LLaVA conversation plus ``rejected_conversations``, single-turn)::

    {"id": "42", "image": "COCO_train2014_000000000042.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nDescribe this image."},
                       {"from": "gpt", "value": "A plate with a knife."}],
     "rejected_conversations": [{"from": "human", "value": "<image>\\nDescribe this image."},
                                {"from": "gpt", "value": "A plate with a fork."}]}

TRL (``DPOTrainer``'s vision layout, with the image given as a file name)::

    {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "A plate with a knife."}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "A plate with a fork."}]}],
     "images": ["COCO_train2014_000000000042.jpg"]}

  ``prompt`` may also be a plain string (an ``<image>`` placeholder in it is optional and removed),
  ``chosen``/``rejected`` plain strings, and any message ``content`` a plain string.

Both formats also carry optional ``"id"`` and ``"source"`` keys. Each holds exactly one rejected answer
per record (POVID's ``rejected_conversations`` is one conversation, TRL's ``rejected`` one answer), so a
``PreferenceRecord`` with several rejected answers is written as one line per (chosen, rejected) pair.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from halluremedy.data.coco import DatasetError, read_text
from halluremedy.data.conversation import (
    Conversation,
    ConversationEncoder,
    Turn,
    parse_turns,
    read_jsonl,
    write_jsonl_atomic,
)
from halluremedy.prompts import IMAGE_TOKEN

__all__ = ["PreferenceFile", "PreferenceRecord", "check_records_fit", "load_preference_file", "load_preferences",
           "parse_preference", "write_preferences"]

Format = Literal["povid", "trl"]


@dataclass(frozen=True)
class PreferenceRecord:
    """One question about one image with a preferred answer and >= 1 dispreferred answers."""

    id: str
    image: str  # file name inside the dataset's image folder
    prompt: str  # question text, without the image placeholder
    chosen: str
    rejected: tuple[str, ...]
    source: str | None = None  # how the rejected answers were made: "rule:cooccur", "llm", "diagnosed", ...

    def __post_init__(self) -> None:
        if isinstance(self.rejected, str) or not self.rejected:
            raise ValueError("PreferenceRecord.rejected must be a non-empty tuple of answers")
        object.__setattr__(self, "rejected", tuple(self.rejected))


# Where each logical field lives in each format, for error messages.
_FIELD_NAMES: dict[Format, dict[str, str]] = {
    "povid": {"image": "image", "prompt": "conversations[0]", "chosen": "conversations[1]",
              "rejected": "rejected_conversations[1]"},
    "trl": {"image": "images", "prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
}


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _require(record: dict, field: str, where: str) -> object:
    if field not in record:
        raise DatasetError(f"{where}: missing field '{field}'")
    return record[field]


def _optional_str(record: dict, field: str, where: str, *, allow_int: bool = False) -> str | None:
    value = record.get(field)
    if value is None:
        return None
    if isinstance(value, str) or (allow_int and isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    raise DatasetError(f"{where}: field '{field}' must be a string")


def _parse_povid(record: dict, where: str) -> PreferenceRecord:
    image = _require(record, "image", where)
    if not isinstance(image, str) or not image:
        raise DatasetError(f"{where}: field 'image' must be a non-empty string (one image file name)")
    chosen = parse_turns(_require(record, "conversations", where), where, "conversations")
    rejected = parse_turns(_require(record, "rejected_conversations", where), where, "rejected_conversations")
    for field, turns in (("conversations", chosen), ("rejected_conversations", rejected)):
        if len(turns) != 1:
            raise DatasetError(f"{where}: field '{field}' must hold one human/gpt turn pair "
                               f"(preference records are single-turn), got {len(turns)}")
    if rejected[0].user != chosen[0].user:
        raise DatasetError(f"{where}: field 'rejected_conversations[0]': the human turn differs from "
                           f"'conversations[0]' ({rejected[0].user!r} vs {chosen[0].user!r})")
    return PreferenceRecord(_optional_str(record, "id", where, allow_int=True) or "", image, chosen[0].user,
                            chosen[0].assistant, (rejected[0].assistant,), _optional_str(record, "source", where))


def _content_text(content: object, where: str, field: str) -> tuple[str, int]:
    """Text of a TRL message ``content`` (a string or a list of typed parts) and its image count."""
    if isinstance(content, str):
        return content.replace(IMAGE_TOKEN, " ").strip(), content.count(IMAGE_TOKEN)
    if not isinstance(content, list):
        raise DatasetError(f"{where}: field '{field}' must be a string or a list of content parts")
    texts, images = [], 0
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            images += 1
        elif kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"].strip())
        else:
            raise DatasetError(f"{where}: field '{field}[{k}]' must be {{'type': 'image'}} or "
                               f"{{'type': 'text', 'text': str}}")
    return " ".join(t for t in texts if t), images


def _trl_message(value: object, where: str, field: str, role: str) -> tuple[str, int]:
    """Text and image count of a TRL field: a plain string or a list holding one ``role`` message."""
    if isinstance(value, str):
        return _content_text(value, where, field)
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == role and "content" in value[0]):
        raise DatasetError(f"{where}: field '{field}' must be a string or a list with one "
                           f"{{'role': '{role}', 'content': ...}} message")
    return _content_text(value[0]["content"], where, f"{field}[0].content")


def _parse_trl(record: dict, where: str) -> PreferenceRecord:
    images = _require(record, "images", where)
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise DatasetError(f"{where}: field 'images' must be a list of image file names")
    if len(images) != 1:
        raise DatasetError(f"{where}: field 'images' must hold exactly one image, got {len(images)}")
    prompt, prompt_images = _trl_message(_require(record, "prompt", where), where, "prompt", "user")
    if prompt_images > 1:
        raise DatasetError(f"{where}: field 'prompt' has {prompt_images} image placeholders; one image per record")
    answers = {}
    for field in ("chosen", "rejected"):
        answers[field], answer_images = _trl_message(_require(record, field, where), where, field, "assistant")
        if answer_images:
            raise DatasetError(f"{where}: field '{field}' must not contain an image")
    return PreferenceRecord(_optional_str(record, "id", where, allow_int=True) or "", images[0], prompt,
                            answers["chosen"], (answers["rejected"],), _optional_str(record, "source", where))


def parse_preference(record: object, where: str, known_images: Collection[str] | None = None) -> PreferenceRecord:
    """Validate one raw record (POVID or TRL layout, detected by its keys) into a ``PreferenceRecord``.

    Raises DatasetError naming ``where`` (``file:line``) and the offending field.
    """
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: record must be a JSON object")
    if "conversations" in record or "rejected_conversations" in record:
        fmt: Format = "povid"
        rec = _parse_povid(record, where)
    elif {"prompt", "chosen", "rejected"} & record.keys():
        fmt = "trl"
        rec = _parse_trl(record, where)
    else:
        raise DatasetError(f"{where}: record is neither POVID ('conversations', 'rejected_conversations') "
                           f"nor TRL ('prompt', 'chosen', 'rejected', 'images')")
    names = _FIELD_NAMES[fmt]
    for key, text in (("prompt", rec.prompt), ("chosen", rec.chosen), ("rejected", rec.rejected[0])):
        if not text:
            raise DatasetError(f"{where}: field '{names[key]}' is empty")
    if _normalise(rec.rejected[0]) == _normalise(rec.chosen):
        raise DatasetError(f"{where}: field '{names['rejected']}' is identical to '{names['chosen']}' "
                           f"(after normalising whitespace)")
    if known_images is not None and rec.image not in known_images:
        raise DatasetError(f"{where}: field '{names['image']}' names {rec.image!r}, "
                           f"which is not among the {len(known_images)} known images")
    return rec


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _read_json_list(path: Path, text: str) -> Iterator[tuple[str, object]]:
    """Yield ``("file:line", element)`` for each element of a top-level JSON list."""
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text, text.index("[") + 1).end()
    line, counted = 1, 0

    def where_at(p: int) -> str:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return f"{path}:{line}"

    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                element, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
            except (ValueError, RecursionError) as e:  # an integer of > 4300 digits, nesting too deep
                raise DatasetError(f"{where_at(pos)}: unreadable JSON: {str(e) or type(e).__name__}") from None
            yield where_at(pos), element
            pos = _WHITESPACE.match(text, end).end()
            if text.startswith("]", pos):
                pos += 1
                break
            if not text.startswith(",", pos):
                raise DatasetError(f"{where_at(pos)}: malformed JSON list: expected ',' or ']'")
            pos = _WHITESPACE.match(text, pos + 1).end()
    if text[pos:].strip():
        raise DatasetError(f"{where_at(pos)}: malformed JSON: extra data after the list")


def _read_records(path: Path) -> Iterator[tuple[str, object]]:
    """``("file:line", raw record)`` from a JSONL file or from a JSON list file (strict UTF-8)."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        yield from _read_json_list(path, text)
    else:
        yield from read_jsonl(path, text)


class PreferenceFile(NamedTuple):
    """What :func:`load_preference_file` read: the valid records, the skipped records' errors, and
    each record's ``file:line`` (``places[i]`` is where ``records[i]`` starts)."""

    records: list[PreferenceRecord]
    errors: list[str]
    places: list[str]


def load_preference_file(path: str | os.PathLike, *, known_images: Collection[str] | None = None,
                         skip_invalid: bool = False) -> PreferenceFile:
    """Read preference records from a JSONL or JSON list file, in either format (detected per record).

    By default the first invalid record raises DatasetError. With ``skip_invalid=True`` invalid records
    are dropped and their error messages returned, for the caller to report. Malformed JSON and bytes
    that are not UTF-8 always raise (file, line and byte offset): they mean a broken file, not a bad
    record. So does a file with no records at all (empty, blank or ``[]``), or one whose every
    record was skipped: there would be nothing to train on.
    """
    path = Path(path)
    records: list[PreferenceRecord] = []
    errors: list[str] = []
    places: list[str] = []
    for where, raw in _read_records(path):
        try:
            records.append(parse_preference(raw, where, known_images))
            places.append(where)
        except DatasetError as e:
            if not skip_invalid:
                raise
            errors.append(str(e))
    if not records:
        if errors:
            raise DatasetError(f"{path}: all {len(errors)} preference records are invalid; the first: {errors[0]}")
        size = path.stat().st_size
        raise DatasetError(f"{path}: no preference records ({'an empty file' if size == 0 else 'no record in it'}, "
                           f"{size} bytes)")
    return PreferenceFile(records, errors, places)


def load_preferences(path: str | os.PathLike, *, known_images: Collection[str] | None = None,
                     skip_invalid: bool = False) -> tuple[list[PreferenceRecord], list[str]]:
    """``(records, errors)`` of :func:`load_preference_file`."""
    loaded = load_preference_file(path, known_images=known_images, skip_invalid=skip_invalid)
    return loaded.records, loaded.errors


def _is_word_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel"


def _unknown_words(tokenizer, text: str) -> list[str]:
    """The pieces of ``text`` a word-level tokenizer maps to ``<unk>``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [text[a:b] for t, (a, b) in zip(enc.input_ids, enc.offset_mapping) if t == tokenizer.unk_token_id]


def check_records_fit(records: Sequence[PreferenceRecord], encoder: ConversationEncoder, *,
                      places: Sequence[str] | None = None, model: str = "the model") -> None:
    """Refuse, before any training, records the model cannot take as they are.

    * Length: prompt (image tokens included) + the longer answer must fit the model's context
      (``encoder.max_length``, its ``max_position_embeddings``); nothing is truncated. No option
      raises that limit, so the message says to shorten the record or use a longer-context model.
    * Vocabulary, for a word-level tokenizer (the tiny scene model's): a word it does not know would
      silently become ``<unk>`` and be trained on; the first such record is named with its words,
      and the count over all records given.

    ``places[i]`` (``file:line``, from :func:`load_preference_file`) names record ``i`` in errors.
    """
    tok = encoder.tokenizer
    word_level = _is_word_level(tok) and tok.unk_token_id is not None

    def where(k: int) -> str:
        return places[k] if places is not None else f"preference record {k} (id {records[k].id!r})"

    first_unknown: tuple[int, str, list[str]] | None = None
    unknown_records, unknown_words = 0, set()
    for k, r in enumerate(records):
        prompt = encoder.prompt_ids(r.prompt, first=True)
        for field, answer in (("chosen", r.chosen), *(("rejected", x) for x in r.rejected)):
            n = len(prompt) + len(encoder.response_ids(answer))
            if encoder.max_length is not None and n > encoder.max_length:
                raise DatasetError(
                    f"{where(k)}: field '{field}': {n} tokens (prompt {len(prompt)} with {encoder.image_seq_length} "
                    f"image tokens + answer {n - len(prompt)}) > the {encoder.max_length}-token context of {model} "
                    f"(max_position_embeddings in its config.json); no option raises it: shorten the record or use "
                    f"a model with a longer context")
        if word_level:
            found = [(field, _unknown_words(tok, text)) for field, text in
                     (("prompt", r.prompt), ("chosen", r.chosen), *(("rejected", x) for x in r.rejected))]
            found = [(field, words) for field, words in found if words]
            if found:
                unknown_records += 1
                unknown_words.update(w.lower() for _, words in found for w in words)
                if first_unknown is None:
                    first_unknown = (k, found[0][0], found[0][1])
    if first_unknown is not None:
        k, field, words = first_unknown
        shown = ", ".join(repr(w) for w in dict.fromkeys(words))
        others = sorted(unknown_words - {w.lower() for w in words})
        raise DatasetError(
            f"{where(k)}: field '{field}': {shown} not in the word-level vocabulary of {model} (would become <unk>); "
            f"{unknown_records} of {len(records)} records have unknown words, {len(unknown_words)} distinct"
            f"{': also ' + ', '.join(map(repr, others[:8])) + (' ...' if len(others) > 8 else '') if others else ''}; "
            f"use words the model knows or a model whose tokenizer covers them")


def _to_povid(rec: PreferenceRecord, rejected: str) -> dict:
    out = Conversation(rec.image, (Turn(rec.prompt, rec.chosen),), rec.id).to_llava()
    out["rejected_conversations"] = Conversation(rec.image, (Turn(rec.prompt, rejected),)).to_llava()["conversations"]
    return out


def _to_trl(rec: PreferenceRecord, rejected: str) -> dict:
    def answer(text: str) -> list[dict]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    return {"id": rec.id,
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rec.prompt}]}],
            "chosen": answer(rec.chosen), "rejected": answer(rejected), "images": [rec.image]}


_WRITERS = {"povid": _to_povid, "trl": _to_trl}


def write_preferences(path: str | os.PathLike, records: Iterable[PreferenceRecord], fmt: Format = "povid") -> None:
    """Write records as JSONL in ``fmt`` ("povid" or "trl"), atomically (temporary file and rename).

    A record with k rejected answers becomes k lines sharing its id, image, prompt and chosen answer.
    """
    if fmt not in _WRITERS:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {sorted(_WRITERS)}")
    lines = []
    for rec in records:
        for rejected in rec.rejected:
            line = _WRITERS[fmt](rec, rejected)
            if rec.source is not None:
                line["source"] = rec.source
            lines.append(line)
    write_jsonl_atomic(path, lines)
