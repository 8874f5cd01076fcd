"""Preference records: both input formats, validation errors, skip mode, JSON list files, round trips."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from halluremedy.data.coco import DatasetError
from halluremedy.data.conversation import ConversationEncoder
from halluremedy.data.preference import (
    PreferenceRecord,
    check_records_fit,
    load_preference_file,
    load_preferences,
    write_preferences,
)


def povid(q="Describe this image.", chosen="A plate with a knife.", rejected="A plate with a fork.", **extra) -> dict:
    return {"id": "7", "image": "0001.png",
            "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": chosen}],
            "rejected_conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                       {"from": "gpt", "value": rejected}], **extra}


def trl(q="Describe this image.", chosen="A plate with a knife.", rejected="A plate with a fork.", **extra) -> dict:
    return {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
            "images": ["0001.png"], **extra}


def write_lines(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


EXPECTED = PreferenceRecord("7", "0001.png", "Describe this image.", "A plate with a knife.", ("A plate with a fork.",))


def test_povid_and_trl_records_parse_to_the_same_record(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_lines(path, [povid(), trl(id=7), trl(id="7", source="llm")])
    records, errors = load_preferences(path)
    assert errors == []
    assert records == [EXPECTED, EXPECTED, replace(EXPECTED, source="llm")]


@pytest.mark.parametrize("record", [
    {"prompt": "<image>\nDescribe this image.", "chosen": "A plate with a knife.",
     "rejected": "A plate with a fork.", "images": ["0001.png"], "id": "7"},
    {"prompt": "Describe this image.", "chosen": " A plate with a knife. ",
     "rejected": [{"role": "assistant", "content": "A plate with a fork."}], "images": ["0001.png"], "id": "7"},
    {"prompt": [{"role": "user", "content": "<image>Describe this image."}],
     "chosen": "A plate with a knife.", "rejected": "A plate with a fork.", "images": ["0001.png"], "id": "7"},
])
def test_trl_string_and_message_variants(tmp_path, record):
    path = tmp_path / "p.jsonl"
    write_lines(path, [record])
    assert load_preferences(path)[0] == [EXPECTED]


def test_json_list_file_names_element_lines(tmp_path):
    path = tmp_path / "povid.json"
    path.write_text(json.dumps([povid(), trl(id="7", chosen="same", rejected="same")], indent=2), encoding="utf-8")
    with pytest.raises(DatasetError) as e:
        load_preferences(path)
    # The second element starts on the line after the first element's closing brace.
    second_line = path.read_text().splitlines().index("  },") + 2
    assert str(e.value).startswith(f"{path}:{second_line}: field 'rejected'")
    records, errors = load_preferences(path, skip_invalid=True)
    assert records == [EXPECTED] and len(errors) == 1


@pytest.mark.parametrize("content, why", [(b"", "an empty file, 0 bytes"), (b"\n  \n", "no record in it, 4 bytes"),
                                          (b" [ ]\n", "no record in it, 5 bytes")])
def test_a_file_without_records_is_a_named_error(tmp_path, content, why):
    # a zero-byte pairs file used to load as no records and fail later, in train/sft.py, as "no training records"
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as e:
        load_preferences(path)
    assert str(e.value) == f"{path}: no preference records ({why})"


def test_every_record_skipped_is_an_error_too(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, [trl(chosen="x", rejected="x"), _drop(trl(), "images")])
    with pytest.raises(DatasetError, match=r"p.jsonl: all 2 preference records are invalid; the first: .*p.jsonl:1: "):
        load_preferences(path, skip_invalid=True)


@pytest.mark.parametrize("layout", ["jsonl", "json"])
def test_bytes_that_are_not_utf8_name_file_line_and_byte_offset(tmp_path, layout):
    good = json.dumps(povid()).encode()
    bad = json.dumps(trl(chosen="A plate with a KNIFE.")).encode().replace(b"KNIFE", b"KN\xffFE")
    path = tmp_path / f"p.{layout}"
    path.write_bytes(good + b"\n" + bad + b"\n" if layout == "jsonl" else b"[" + good + b",\n" + bad + b"]")
    offset = path.read_bytes().index(b"\xff")
    with pytest.raises(DatasetError) as e:
        load_preferences(path, skip_invalid=True)  # a broken file is never a skippable record
    assert str(e.value).startswith(f"{path}:2: not valid UTF-8 at byte offset {offset} (byte 0xff")


def test_a_utf8_bom_is_accepted_and_a_missing_file_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(povid()).encode() + b"\n")
    assert load_preferences(path)[0] == [EXPECTED]
    with pytest.raises(DatasetError, match=r"nope.jsonl: file does not exist"):
        load_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match=r"is a directory"):
        load_preferences(tmp_path)


def test_places_name_each_record(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(povid()) + "\n\n" + json.dumps(trl(id=7)) + "\n", encoding="utf-8")
    loaded = load_preference_file(path)
    assert loaded.records == [EXPECTED, EXPECTED] and loaded.places == [f"{path}:1", f"{path}:3"]


@pytest.fixture(scope="module")
def encoder(tiny_llava_factory):
    """The tiny model's encoder: word-level tokenizer, 16 image tokens, a 256-token context."""
    _, processor = tiny_llava_factory()
    return ConversationEncoder(processor.tokenizer, 16, max_length=256)


def _fit(encoder, records, path):
    write_lines(path, records)
    loaded = load_preference_file(path)
    check_records_fit(loaded.records, encoder, places=loaded.places, model="tiny")


def test_records_that_fit_pass(encoder, tmp_path):
    _fit(encoder, [povid(chosen="a red square.", rejected="a blue square."), trl(chosen="a box.", rejected="a disc.")],
         tmp_path / "p.jsonl")


def test_an_over_length_record_names_file_line_field_and_the_real_limit(encoder, tmp_path):
    long = " ".join(["a red square and a white circle."] * 40)
    path = tmp_path / "p.jsonl"
    with pytest.raises(DatasetError) as e:
        _fit(encoder, [povid(chosen="a red square.", rejected="a blue square."),
                       povid(chosen="a red square.", rejected=long)], path)
    message = str(e.value)
    assert message.startswith(f"{path}:2: field 'rejected': ") and "> the 256-token context of tiny" in message
    assert "max_position_embeddings" in message and "no option raises it" in message
    assert "max_length" not in message


def test_words_outside_a_word_level_vocabulary_are_refused_not_trained_as_unk(encoder, tmp_path):
    path = tmp_path / "p.jsonl"
    with pytest.raises(DatasetError) as e:
        _fit(encoder, [povid(chosen="a red square.", rejected="a blue square."),
                       povid(chosen="a red square.", rejected="a Zebra and a trampoline."),
                       trl(chosen="a box.", rejected="a purple box.")], path)
    message = str(e.value)
    assert message.startswith(f"{path}:2: field 'rejected': 'Zebra', 'trampoline' not in the word-level vocabulary")
    assert "<unk>" in message and "2 of 3 records have unknown words, 3 distinct: also 'purple'" in message


def test_malformed_json_list_raises(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(f"[{json.dumps(povid())}\n {json.dumps(povid())}]")
    with pytest.raises(DatasetError, match=r"bad.json:2: malformed JSON list"):
        load_preferences(path)


def _drop(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


BAD = [
    (_drop(povid(), "rejected_conversations"), "missing field 'rejected_conversations'"),
    (_drop(povid(), "image"), "missing field 'image'"),
    (_drop(trl(), "images"), "missing field 'images'"),
    (_drop(trl(), "chosen"), "missing field 'chosen'"),
    (povid(image=["a.png", "b.png"]), "field 'image' must be a non-empty string"),
    (trl(images=["a.png", "b.png"]), "field 'images' must hold exactly one image, got 2"),
    (trl(images="0001.png"), "field 'images' must be a list"),
    (trl(prompt="<image><image>Describe."), "field 'prompt' has 2 image placeholders"),
    ({**trl(), "chosen": 3}, "field 'chosen' must be a string or a list with one"),
    ({**trl(), "rejected": [{"role": "user", "content": "x"}]}, "field 'rejected' must be a string or a list with one"),
    (trl(chosen="   "), "field 'chosen' is empty"),
    (trl(rejected=""), "field 'rejected' is empty"),
    (povid(chosen=""), "field 'conversations[0]' has an empty question or answer"),
    (povid(rejected="A plate with a knife."), "field 'rejected_conversations[1]' is identical to 'conversations[1]'"),
    (povid(rejected="A plate  with a\nknife. "), "is identical to 'conversations[1]' (after normalising whitespace)"),
    (trl(rejected="A  plate with a knife."), "field 'rejected' is identical to 'chosen'"),
    ({**povid(), "rejected_conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                            {"from": "gpt", "value": "A fork."}]},
     "the human turn differs from 'conversations[0]'"),
    ({**povid(), "conversations": povid()["conversations"] + [{"from": "human", "value": "Why?"},
                                                               {"from": "gpt", "value": "Because."}]},
     "field 'conversations' must hold one human/gpt turn pair (preference records are single-turn), got 2"),
    (povid(id=["x"]), "field 'id' must be a string"),
    (trl(source=1), "field 'source' must be a string"),
    ({"image": "0001.png"}, "record is neither POVID"),
    ([1, 2], "record must be a JSON object"),
]


@pytest.mark.parametrize("record,message", BAD, ids=[m for _, m in BAD])
def test_invalid_records_name_file_line_and_field(tmp_path, record, message):
    path = tmp_path / "p.jsonl"
    write_lines(path, [povid(), record])
    with pytest.raises(DatasetError) as e:
        load_preferences(path)
    assert str(e.value).startswith(f"{path}:2: ")
    assert message in str(e.value)


def test_skip_invalid_returns_errors_and_keeps_good_records(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, [povid(), trl(chosen="x", rejected="x"), _drop(trl(), "images"), trl(id="7")])
    records, errors = load_preferences(path, skip_invalid=True)
    assert records == [EXPECTED, EXPECTED]
    assert [e.split(": ")[0] for e in errors] == [f"{path}:2", f"{path}:3"]


def test_known_images(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, [povid(), trl(images=["0002.png"])])
    with pytest.raises(DatasetError, match=r"p.jsonl:2: field 'images' names '0002.png', which is not among the 1 known"):
        load_preferences(path, known_images={"0001.png"})
    assert len(load_preferences(path, known_images={"0001.png", "0002.png"})[0]) == 2


def test_record_needs_a_rejected_answer():
    with pytest.raises(ValueError):
        PreferenceRecord("1", "a.png", "q", "c", ())
    assert PreferenceRecord("1", "a.png", "q", "c", ["r"]).rejected == ("r",)


@pytest.mark.parametrize("fmt", ["povid", "trl"])
def test_round_trip(tmp_path, fmt):
    records = [
        PreferenceRecord("1", "0001.png", "Describe this image.", "A red square.", ("A blue square.",), "rule:attribute"),
        PreferenceRecord("2", "0002.png", "What is on the left?", "A white circle.", ("A bar.",)),
    ]
    path = tmp_path / f"{fmt}.jsonl"
    write_preferences(path, records, fmt=fmt)
    assert load_preferences(path) == (records, [])
    first = json.loads(path.read_text().splitlines()[0])
    assert ("rejected_conversations" in first) == (fmt == "povid") and ("images" in first) == (fmt == "trl")


@pytest.mark.parametrize("fmt", ["povid", "trl"])
def test_several_rejected_answers_become_one_line_per_pair(tmp_path, fmt):
    rec = PreferenceRecord("1", "0001.png", "Describe this image.", "A red square.",
                           ("A blue square.", "A red square and a fork."), "llm")
    path = tmp_path / "multi.jsonl"
    write_preferences(path, [rec], fmt=fmt)
    back, _ = load_preferences(path)
    assert back == [replace(rec, rejected=(r,)) for r in rec.rejected]


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown preference format"):
        write_preferences(tmp_path / "x.jsonl", [], fmt="csv")
