"""``halluremedy chair``: CHAIR of a captions JSONL file, end to end through ``cli.main``."""

import json
from pathlib import Path

import pytest

from halluremedy.cli import main
from halluremedy.data.coco import DatasetError, write_coco
from halluremedy.eval.chair_reference import ReferenceVocabulary
from halluremedy.eval.coco_synonyms import COCO_CLASSES
from halluremedy.eval.score_captions import read_caption_lines, score_captions

CASES = Path(__file__).resolve().parents[3] / "shared" / "chair_reference_cases" / "cases.jsonl"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run_chair(*args: str) -> int:
    return main(["chair", *args])


def test_ground_truth_per_line(tmp_path, capsys):
    captions = write_jsonl(tmp_path / "caps.jsonl", [
        {"image_id": 1, "caption": "A bus driver and a bus near a panda.", "ground_truth": ["person", "bus"]},
        {"image_id": 2, "caption": "Two dogs on a couch.", "ground_truth": ["dog", "couch"], "model": "x"},
    ])
    out = tmp_path / "out" / "chair.json"
    assert run_chair("--captions", str(captions), "--out", str(out)) == 0
    result = json.loads(out.read_text())
    # reference: "bus" -> "bu" is never counted; panda is a bear (hallucinated)
    assert [(c["image_id"], c["mentions"], c["hallucinated"]) for c in result["per_caption"]] == [
        (1, ["person", "bear"], ["bear"]), (2, ["dog", "couch"], [])]
    assert result["per_caption"][0]["mention_words"] == ["driver", "panda"]
    assert result["per_caption"][0]["ground_truth"] == ["bus", "person"]
    assert result["signature"] == ReferenceVocabulary().signature and result["compat"] == "reference"
    assert (result["chair_s"], result["chair_i"]) == (0.5, 0.25)
    assert (result["n_captions"], result["n_mentions"], result["n_hallucinated_mentions"]) == (2, 4, 1)
    assert result["recall"] == 3 / 4 and result["ground_truth"] == "per line"
    printed = capsys.readouterr().out
    assert f"CHAIR signature: {result['signature']}" in printed and "| caps.jsonl | 0.500 | 0.250 |" in printed

    assert run_chair("--captions", str(captions), "--compat", "halluremedy", "--out", str(out)) == 0
    result = json.loads(out.read_text())
    assert [c["mentions"] for c in result["per_caption"]] == [["bus", "person", "bus"], ["dog", "couch"]]
    assert result["signature"].startswith("chair:halluremedy|syn:halluremedy-coco.")


def test_coco_annotations(tmp_path):
    root = tmp_path / "coco"
    write_coco(root, "val2014", images=[("a.jpg", 64, 48), ("b.jpg", 64, 48)], categories=list(COCO_CLASSES),
               annotations=[(1, "person", (0, 0, 8, 8), {}), (1, "dog", (1, 1, 8, 8), {}),
                            (2, "cat", (0, 0, 8, 8), {})],
               captions=[(1, "A keeper walks a dog past a panda."), (1, "A man and his dog."),
                         (2, "A kitten on a bench.")])
    captions = write_jsonl(tmp_path / "caps.jsonl", [
        {"image_id": 2, "caption": "A cat on a bench next to a panda."},
        {"image_id": 1, "caption": "A panda and a dog with a frisbee."},
    ])
    out = tmp_path / "chair.json"
    assert run_chair("--captions", str(captions), "--annotations", str(root), "--out", str(out)) == 0
    result = json.loads(out.read_text())
    # GT 1: person, dog (annotated) + bear (the reference reads "panda" in a GT caption); GT 2: cat + bench
    assert [(c["image_id"], c["ground_truth"], c["mentions"], c["hallucinated"]) for c in result["per_caption"]] == [
        (2, ["bench", "cat"], ["cat", "bench", "bear"], ["bear"]),
        (1, ["bear", "dog", "person"], ["bear", "dog", "frisbee"], ["frisbee"])]
    assert result["ground_truth"] == f"{root}:val2014"

    assert run_chair("--captions", str(captions), "--annotations", str(root), "--compat", "halluremedy",
                     "--out", str(out)) == 0
    result = json.loads(out.read_text())  # halluremedy knows no panda, in the GT captions or the generated ones
    assert [(c["ground_truth"], c["mentions"]) for c in result["per_caption"]] == [
        (["bench", "cat"], ["cat", "bench"]), (["dog", "person"], ["dog", "frisbee"])]


def test_the_conformance_cases_from_the_command_line(tmp_path):
    assert CASES.is_file(), f"conformance cases missing: {CASES}"
    out = tmp_path / "cases.json"
    assert run_chair("--captions", str(CASES), "--out", str(out)) == 0
    per_caption = json.loads(out.read_text())["per_caption"]
    cases = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(per_caption) == len(cases) == 600
    assert [(p["image_id"], p["mentions"], p["hallucinated"]) for p in per_caption] == [
        (c["image_id"], c["reference_mentions"], c["reference_hallucinated"]) for c in cases]


GOOD = '{"image_id": 1, "caption": "A dog.", "ground_truth": ["dog"]}\n'


@pytest.mark.parametrize(("second_line", "message"), [
    (b'{"image_id": 2, "caption": "A cat."', "malformed JSON: Expecting ',' delimiter (column 36)"),
    (b'[2, "A cat."]', "must be a JSON object"),
    (b'{"caption": "A cat.", "ground_truth": []}', "field 'image_id': missing"),
    (b'{"image_id": "2", "caption": "A cat.", "ground_truth": []}', "field 'image_id': must be an integer"),
    (b'{"image_id": true, "caption": "A cat.", "ground_truth": []}', "field 'image_id': must be an integer"),
    (b'{"image_id": 2, "ground_truth": []}', "field 'caption': missing"),
    (b'{"image_id": 2, "caption": 7, "ground_truth": []}', "field 'caption': must be a string"),
    (b'{"image_id": 2, "caption": "A cat."}', "field 'ground_truth': missing (give it on every line, or give "
                                             "annotations)"),
    (b'{"image_id": 2, "caption": "A cat.", "ground_truth": "cat"}', "field 'ground_truth': must be a list of strings"),
    (b'{"image_id": 2, "caption": "A cat.", "ground_truth": ["kitty"]}', "field 'ground_truth': 'kitty' is not a COCO class"),
    (b'{"image_id": 1, "caption": "A cat.", "ground_truth": []}', "field 'image_id': image 1 is already captioned on line 1"),
    ('{"image_id": 2, "caption": "A caf\u00e9 cat."}'.encode("latin-1"), "not valid UTF-8 at byte offset 95 (byte 0xe9: invalid continuation byte); save the file as UTF-8"),
])
def test_a_bad_line_is_one_named_error_and_no_output(tmp_path, capsys, second_line, message):
    captions = tmp_path / "caps.jsonl"
    captions.write_bytes(GOOD.encode() + second_line + b"\n")
    out = tmp_path / "out.json"
    assert run_chair("--captions", str(captions), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err == f"halluremedy: error: {captions}:2: {message}\n"
    assert not out.exists()


def test_errors_of_the_annotations_form(tmp_path, capsys):
    root = tmp_path / "coco"
    write_coco(root, "val2014", images=[("a.jpg", 8, 8)], categories=list(COCO_CLASSES),
               annotations=[(1, "dog", (0, 0, 2, 2), {})], captions=[])
    out = tmp_path / "out.json"
    captions = write_jsonl(tmp_path / "caps.jsonl", [{"image_id": 1, "caption": "A dog."},
                                                     {"image_id": 9, "caption": "A cat."}])
    assert run_chair("--captions", str(captions), "--annotations", str(root), "--out", str(out)) == 2
    assert capsys.readouterr().err == (f"halluremedy: error: {captions}:2: field 'image_id': image 9 is not in "
                                       f"{root} split val2014\n")
    write_jsonl(captions, [{"image_id": 1, "caption": "A dog.", "ground_truth": ["dog"]}])
    assert run_chair("--captions", str(captions), "--annotations", str(root), "--out", str(out)) == 2
    assert "caps.jsonl:1: field 'ground_truth': given together with annotations" in capsys.readouterr().err
    assert run_chair("--captions", str(captions), "--annotations", str(tmp_path / "nowhere"), "--out", str(out)) == 2
    assert "instances_val2014.json: file does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_reference_mode_refuses_non_coco_annotations(tmp_path):
    root = tmp_path / "scenes"
    write_coco(root, "val", images=[("a.png", 8, 8)], categories=["circle"], annotations=[(1, "circle", (0, 0, 2, 2), {})],
               captions=[(1, "A disc.")], synonyms={"circle": ["circle", "disc"]})
    captions = write_jsonl(tmp_path / "caps.jsonl", [{"image_id": 1, "caption": "A disc and a ring."}])
    with pytest.raises(DatasetError, match=r"categories \['circle'\] are not classes of the reference CHAIR vocabulary"):
        score_captions(captions, annotations=root, split="val")
    result = score_captions(captions, annotations=root, split="val", compat="halluremedy")  # the data's own table
    assert result["per_caption"][0]["mentions"] == ["circle"] and result["signature"].startswith(
        "chair:halluremedy|syn:dataset.")


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"empty.jsonl: no captions$"):
        read_caption_lines(empty, COCO_CLASSES, ground_truth_given=True)
    with pytest.raises(DatasetError, match=r"nope.jsonl: file does not exist$"):
        read_caption_lines(tmp_path / "nope.jsonl", COCO_CLASSES, ground_truth_given=True)


def test_revision_option(tmp_path, capsys):
    captions = write_jsonl(tmp_path / "caps.jsonl", [{"image_id": 1, "caption": "Train tracks.", "ground_truth": []}])
    out = tmp_path / "out.json"
    assert run_chair("--captions", str(captions), "--reference-revision", "e36ff5e", "--out", str(out)) == 0
    result = json.loads(out.read_text())
    assert result["per_caption"][0]["mentions"] == [] and "@e36ff5e." in result["signature"]
    with pytest.raises(SystemExit) as stop:
        run_chair("--captions", str(captions), "--compat", "halluremedy", "--reference-revision", "e36ff5e",
                  "--out", str(out))
    assert stop.value.code == 2 and "--reference-revision applies to --compat reference only" in capsys.readouterr().err
