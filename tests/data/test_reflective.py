"""REVERIE reflective records: format, layouts, assistant-only labels (data/), scene rationales (generate/), the SFT loop."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from halluremedy.data.coco import DatasetError
from halluremedy.data.conversation import IGNORE_INDEX, ConversationEncoder
from halluremedy.data.images import ImageBank
from halluremedy.data.reflective import ReflectiveRecord, load_reflective, reflective_conversations, write_reflective
from halluremedy.data.scenes import make_dataset
from halluremedy.generate.reflective import (
    REFLECTIVE_MIX,
    reflective_records,
    scene_rationales,
    scene_reflective_records,
)
from halluremedy.generate.targeted import TargetWeights, sample_questions
from halluremedy.models.llava import TinyLlavaSpec, build_tiny_llava, image_seq_length
from halluremedy.models.tokenizer import split_words
from halluremedy.pipeline import scene_model_texts
from halluremedy.prompts import EXPLAIN_PROMPT, EXPLAIN_WRONG_PROMPT
from halluremedy.train.loop import LoopConfig
from halluremedy.train.sft import SupervisedBatches, train_sft

RECORD = ReflectiveRecord("r1", "a.png", "Is there a moon in the image?", "No", "Yes",
                          "there is no moon in the image. there is a red star.",
                          "the answer yes is wrong. there is a red star in the image and no moon.", "existence_absent")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("scenes"), "train", 60, seed=0, caption_noise=0.5, progress=False)


def test_record_validation_and_json_round_trip(tmp_path):
    with pytest.raises(ValueError, match="rationale"):
        ReflectiveRecord("x", "a.png", "q?", "Yes", "No", " ", "why not")
    with pytest.raises(ValueError, match="confusing_answer equals answer"):
        ReflectiveRecord("x", "a.png", "q?", "Yes", "yes", "r", "w")
    write_reflective(tmp_path / "r.jsonl", [RECORD, RECORD])
    assert load_reflective(tmp_path / "r.jsonl") == [RECORD, RECORD]
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "question": "q", "answer": "Yes"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: field 'confusing_answer'"):
        load_reflective(tmp_path / "bad.jsonl")


def test_layouts_keep_positive_and_negative_rationales_in_separate_samples():
    answer, = reflective_conversations([RECORD], "answer")
    assert [(t.user, t.assistant) for t in answer.turns] == [(RECORD.question, "No")]
    positive, negative = reflective_conversations([RECORD], "both")
    assert positive.turns[1].user == EXPLAIN_PROMPT == "Explain why."
    assert positive.turns[1].assistant == RECORD.rationale and positive.id == "r1/why"
    assert negative.turns[1].user == EXPLAIN_WRONG_PROMPT.format(answer="Yes") == "Explain why this answer is wrong: Yes"
    assert negative.turns[1].assistant == RECORD.wrong_rationale and negative.id == "r1/wrong"
    assert positive.turns[0] == negative.turns[0] == answer.turns[0]
    assert reflective_conversations([RECORD], "positive") == [positive]
    assert reflective_conversations([RECORD], "negative") == [negative]
    with pytest.raises(ValueError, match="layout"):
        reflective_conversations([RECORD], "mixed")


def test_scene_rationales_are_grounded_in_the_annotations(scenes):
    questions = sample_questions(scenes, TargetWeights.uniform(scenes.categories), 200, seed=0, mix=REFLECTIVE_MIX)
    records = reflective_records(questions)
    assert len(records) == 200 and Counter(r.kind for r in records).keys() == {
        "existence_absent", "existence_present", "attribute", "relation"}
    for q, r in zip(questions, records, strict=True):
        assert r.confusing_answer == ("No" if r.answer == "Yes" else "Yes")
        assert r.wrong_rationale.startswith(f"the answer {r.confusing_answer.lower()} is wrong.")
        if q.kind == "existence_absent":
            assert r.rationale.startswith(f"there is no {q.category} in the image.")
            if q.trigger is not None:
                assert f"there is a {q.trigger.attributes['size']} {q.trigger.attributes['color']} " \
                       f"{q.trigger.category} in the image and no {q.category}." in r.wrong_rationale
        elif q.kind == "existence_present":
            for o in (o for o in q.image.objects if o.category == q.category):
                assert f"{o.attributes['size']} {o.attributes['color']} {o.category}" in r.rationale
        elif q.kind == "attribute" and q.answer == "No":
            assert r.rationale.endswith(f"and no {q.value} {q.category}.")
        elif q.kind == "relation":
            assert r.rationale.startswith("the ") and q.true_relation.split()[0] in r.rationale
    with pytest.raises(ValueError, match="caption"):
        scene_rationales(next(q for q in sample_questions(scenes, TargetWeights.uniform(scenes.categories), 20,
                                                          seed=0) if q.kind == "caption"))


def test_every_word_is_known_to_the_scene_model(scenes):
    """The base model's vocabulary is fixed when it is trained: rationales must not need new words."""
    known = {w for t in scene_model_texts() for w in split_words(t.replace("<image>", " "))}
    records = scene_reflective_records(scenes, 300, seed=0)
    words = [w for c in reflective_conversations(records, "both") for t in c.turns
             for w in split_words(t.user) + split_words(t.assistant)]
    assert len(words) > 5000 and not set(words) - known  # unknown-word rate 0


def test_reflective_samples_train_through_the_sft_loop(scenes, tmp_path):
    model, processor = build_tiny_llava(TinyLlavaSpec(), scene_model_texts(), seed=0)
    encoder = ConversationEncoder(processor.tokenizer, image_seq_length(model), max_length=256)
    conversations = reflective_conversations(scene_reflective_records(scenes, 8, seed=1), "both")
    assert len(conversations) == 16

    # loss on assistant turns only: the labels spell exactly the answer and the rationale
    ids, labels = encoder.encode(conversations[0].turns)
    assert processor.tokenizer.unk_token_id not in ids
    kept = [t for t in labels if t != IGNORE_INDEX]
    turns = conversations[0].turns
    assert kept == encoder.response_ids(turns[0].assistant) + encoder.response_ids(turns[1].assistant)

    batches = SupervisedBatches(conversations, encoder, ImageBank(scenes, processor.image_processor), 4, seed=0)
    rows = train_sft(model, batches, LoopConfig(steps=2, lr=1e-3, log_every=1), tmp_path / "run")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
