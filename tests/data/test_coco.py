"""COCO-format inputs: UTF-8 and image checks that name file and record, sample sizes, atomic writes
that honour the umask and never leave a partial file."""

from __future__ import annotations

import json
import os

import pytest

from halluremedy.data.coco import CocoDataset, DatasetError, write_json_atomic
from halluremedy.data.conversation import write_jsonl_atomic
from halluremedy.errors import ConfigError


def test_non_utf8_instances_file_names_file_line_and_byte_offset(tiny_coco):
    path = tiny_coco.instances_path
    data = path.read_bytes().replace(b'"square"', b'"squ\xe9re"', 1)
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(DatasetError) as e:
        CocoDataset.load(tiny_coco.root, "train")
    assert str(e.value).startswith(f"{path}:1: not valid UTF-8 at byte offset {offset} (byte 0xe9")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_verify_images_names_the_record_and_the_file(tiny_coco_split, damage):
    dataset = tiny_coco_split("val", 4)
    image = dataset.images[2].path
    if damage == "truncated":
        image.write_bytes(image.read_bytes()[:40])
    elif damage == "garbage":
        image.write_bytes(b"not a png at all")
    else:
        image.unlink()
    with pytest.raises(DatasetError) as e:
        dataset.verify_images()
    where = f"{dataset.root / 'annotations' / 'instances_val.json'}: images[2] (id 3) field 'file_name': {image}"
    assert str(e.value).startswith(where)
    assert "\n" not in str(e.value)


def test_verify_images_passes_on_good_images(tiny_coco):
    tiny_coco.verify_images()


def test_sample_size_larger_than_the_split_is_refused(tiny_coco):
    tiny_coco.check_sample_size(len(tiny_coco), "--chair-images")
    with pytest.raises(ConfigError, match=r"option '--chair-images': 1000 images asked for, but split 'train' of .* "
                                          r"has 6; pass at most 6"):
        tiny_coco.check_sample_size(1000, "--chair-images")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path, umask_022):
    # tempfile.mkstemp made these 0600 while every other output was 0644
    (tmp_path / "plain.txt").write_text("x")
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    write_json_atomic(tmp_path / "a.json", {"a": 1})
    write_jsonl_atomic(tmp_path / "b.jsonl", [{"b": 2}])
    assert plain == umask_022
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == plain
    assert (tmp_path / "b.jsonl").stat().st_mode & 0o777 == plain


def test_a_failed_atomic_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"a": 1})
    write_jsonl_atomic(tmp_path / "b.jsonl", [{"b": 2}])
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "a.json", {"a": object()})
    with pytest.raises(TypeError):
        write_jsonl_atomic(tmp_path / "b.jsonl", [{"b": 3}, {"b": object()}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.jsonl"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": 1}
    assert (tmp_path / "b.jsonl").read_text() == '{"b": 2}\n'
