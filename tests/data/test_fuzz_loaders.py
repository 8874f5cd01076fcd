"""Fuzzing the preference and COCO loaders with damaged copies of valid files (random truncation, byte
flips, JSON type swaps): every outcome is a valid load or a DatasetError naming the file, never an
exception from deep inside."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halluremedy.data.coco import CocoDataset, DatasetError
from halluremedy.data.preference import PreferenceRecord, load_preferences

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

POVID = {"id": "7", "image": "0001.png",
         "conversations": [{"from": "human", "value": "<image>\nDescribe this image."},
                           {"from": "gpt", "value": "A plate with a knife."}],
         "rejected_conversations": [{"from": "human", "value": "<image>\nDescribe this image."},
                                    {"from": "gpt", "value": "A plate with a fork."}], "source": "rule:cooccur"}
TRL = {"id": 8, "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
       "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "A knife."}]}],
       "rejected": "A fork.", "images": ["0002.png"]}
SWAPS = [None, True, 0, -1, 2.5, "", "x", [], [1], {}, {"a": 1}]


def _paths(value, prefix=()):
    """Every path (tuple of keys / indices) into a JSON value, the root included."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replaced(value, path, new):
    if not path:
        return new
    out = dict(value) if isinstance(value, dict) else list(value)
    out[path[0]] = _replaced(value[path[0]], path[1:], new)
    return out


@st.composite
def damaged(draw, documents: list) -> bytes:
    """``documents`` serialised (one JSON per line, or one JSON document), then damaged one way."""
    kind = draw(st.sampled_from(["truncate", "flip", "swap"]))
    if kind == "swap":
        k = draw(st.integers(0, len(documents) - 1))
        path = draw(st.sampled_from(list(_paths(documents[k]))))
        new = draw(st.sampled_from([s for s in SWAPS if type(s) is not type(_get(documents[k], path))] or SWAPS))
        documents = [*documents[:k], _replaced(documents[k], path, new), *documents[k + 1:]]
    data = "".join(json.dumps(d, indent=draw(st.sampled_from([None, 1]))) + "\n" for d in documents).encode()
    if kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return data


def _get(value, path):
    for key in path:
        value = value[key]
    return value


@given(st.data())
@FUZZ
def test_damaged_preference_files_load_or_name_the_file(tmp_path, data):
    layout = data.draw(st.sampled_from(["jsonl", "json"]))
    documents = [POVID, TRL, POVID] if layout == "jsonl" else [[POVID, TRL]]
    path = tmp_path / f"pairs.{layout}"
    path.write_bytes(data.draw(damaged(documents)))
    try:
        records, errors = load_preferences(path, skip_invalid=data.draw(st.booleans()))
    except DatasetError as e:
        assert str(e).startswith(str(path)), e
        return
    assert records and all(isinstance(r, PreferenceRecord) and r.image and r.prompt and r.chosen and r.rejected
                           for r in records)
    assert all(e.startswith(f"{path}:") for e in errors)


@given(st.data())
@FUZZ
def test_damaged_coco_annotations_load_or_name_the_file(tiny_coco_split, data):
    dataset = tiny_coco_split("val", 4)  # once per test: every example restores what it damaged
    root = dataset.root
    name = data.draw(st.sampled_from(["instances", "captions"]))
    path = root / "annotations" / f"{name}_val.json"
    original = path.read_bytes()
    try:
        path.write_bytes(data.draw(damaged([json.loads(original)])))
        try:
            loaded = CocoDataset.load(root, "val", require_captions=data.draw(st.booleans()))
        except DatasetError as e:
            assert str(e).startswith(str(path)) or str(dataset.instances_path) in str(e), e
            return
        assert all(im.path.parent == root / "val" and im.path.is_file() for im in loaded.images)
        assert all(o.category in loaded.categories for im in loaded.images for o in im.objects)
    finally:
        path.write_bytes(original)
