"""build_preference_pairs and the CLI, end to end on a tiny scene dataset."""

from __future__ import annotations

import json
import logging

import pytest

from halluremedy.data.preference import load_preferences
from halluremedy.data.scenes import make_dataset
from halluremedy.data.sft import CAPTION_PROMPTS
from halluremedy.generate import RuleBasedEditor, build_preference_pairs, generate_preference_pairs
from halluremedy.generate.__main__ import main


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return make_dataset(root, "train", 20, seed=0, progress=False)


def test_pairs_pair_each_caption_with_its_edit(scenes):
    editor = RuleBasedEditor.for_dataset(scenes)
    records = build_preference_pairs(scenes, editor, seed=0)
    assert len(records) == sum(len(im.captions) for im in scenes.images)  # clean scenes: every caption edits
    captions = {im.file_name: im.captions for im in scenes.images}
    for rec in records:
        k = int(rec.id.split("/caption")[1])
        assert rec.chosen == captions[rec.image][k]
        assert rec.prompt == CAPTION_PROMPTS[k % 2]
        assert len(rec.rejected) == 1 and rec.rejected[0] != rec.chosen
        assert rec.source in {"rule:cooccur", "rule:attribute", "rule:relation"}
    assert {rec.source for rec in records} == {"rule:cooccur", "rule:attribute", "rule:relation"}


def test_pairs_are_deterministic_per_seed(scenes):
    editor = RuleBasedEditor.for_dataset(scenes)
    first = build_preference_pairs(scenes, editor, seed=0)
    assert build_preference_pairs(scenes, editor, seed=0) == first
    assert build_preference_pairs(scenes, editor, seed=1) != first


def test_per_image_kinds_and_counts(scenes):
    editor = RuleBasedEditor.for_dataset(scenes)
    one = generate_preference_pairs(scenes, editor, seed=0, per_image=1)
    assert len(one.records) == len(scenes) and len({r.image for r in one.records}) == len(scenes)
    relation_only = generate_preference_pairs(scenes, editor, seed=0, kinds=("relation",))
    assert set(relation_only.edited) == {"relation"}
    # short captions (caption 0) never state a relation
    assert relation_only.no_edit >= len(scenes) and relation_only.captions == 2 * len(scenes)
    assert relation_only.no_edit + relation_only.edited["relation"] == relation_only.captions
    assert all(r.id.endswith("/caption1") for r in relation_only.records)
    with pytest.raises(ValueError, match="unknown edit kinds"):
        generate_preference_pairs(scenes, editor, seed=0, kinds=("count",))


def test_noisy_captions_are_not_preferred(tmp_path):
    noisy = make_dataset(tmp_path, "train", 20, seed=0, caption_noise=1.0, progress=False)
    editor = RuleBasedEditor.for_dataset(noisy)
    result = generate_preference_pairs(noisy, editor, seed=0)
    assert result.unfaithful > 0
    assert result.unfaithful + len(result.records) + result.no_edit == result.captions
    kept = generate_preference_pairs(noisy, editor, seed=0, faithful_only=False)
    assert kept.unfaithful == 0 and len(kept.records) > len(result.records)


def test_cli_end_to_end(scenes, tmp_path, caplog):
    out = tmp_path / "pairs.jsonl"
    with caplog.at_level(logging.INFO, logger="halluremedy.generate"):
        main(["--data", str(scenes.root), "--split", "train", "--out", str(out), "--seed", "0"])
    records, errors = load_preferences(out, known_images={im.file_name for im in scenes.images})
    assert not errors and len(records) == 2 * len(scenes)
    assert records == build_preference_pairs(scenes, RuleBasedEditor.for_dataset(scenes), seed=0)
    assert "40 captions -> 40 pairs" in caplog.text and "no possible edit: 0" in caplog.text
    assert "rejected_conversations" in json.loads(out.read_text().splitlines()[0])

    trl = tmp_path / "pairs_trl.jsonl"
    main(["--data", str(scenes.root), "--split", "train", "--out", str(trl), "--seed", "0", "--format", "trl",
          "--kinds", "attribute", "--per-image", "1", "--prompt", "detailed", "--no-progress"])
    lines = [json.loads(line) for line in trl.read_text().splitlines()]
    assert len(lines) == len(scenes) and {line["source"] for line in lines} == {"rule:attribute"}
    assert {line["prompt"][0]["content"][1]["text"] for line in lines} == {CAPTION_PROMPTS[1]}


def test_cli_llm_editor_against_stub(scenes, tmp_path, stub_endpoint):
    stub_endpoint.reply_with_content("a hallucinated caption.")
    out = tmp_path / "llm.jsonl"
    main(["--data", str(scenes.root), "--split", "train", "--out", str(out), "--seed", "0", "--editor", "llm",
          "--base-url", stub_endpoint.base_url, "--model", "stub", "--per-image", "1", "--no-progress"])
    records, _ = load_preferences(out)
    assert len(records) == len(stub_endpoint.requests) == len(scenes)
    assert all(r.rejected == ("a hallucinated caption.",) and r.source.startswith("llm:") for r in records)
