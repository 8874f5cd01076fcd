"""Targeted data: weights from a diagnosis, grounded questions that are true, pairs that inject the
diagnosed hallucination, in the formats the SFT and DPO recipes read."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import VOCAB

from halluremedy.data.conversation import load_conversations
from halluremedy.data.preference import load_preferences, write_preferences
from halluremedy.data.scenes import make_dataset
from halluremedy.diagnose import analyse
from halluremedy.eval.run import object_vocabulary
from halluremedy.generate.targeted import (
    QUESTION_KINDS,
    InstructionMix,
    TargetWeights,
    instruction_conversations,
    sample_questions,
    targeted_preference_pairs,
    write_instructions,
)
from halluremedy.generate.targeted import _relation as relation_of
from halluremedy.models.tokenizer import split_words
from halluremedy.pipeline import scene_model_texts
from halluremedy.prompts import POPE_SUFFIX


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("scenes"), "train", 80, seed=0, caption_noise=0.5, progress=False)


def test_weights_from_a_diagnosis(fake_run):
    w = TargetWeights.from_diagnosis(analyse(fake_run, VOCAB))
    assert w.name == "targeted" and sum(w.classes.values()) == pytest.approx(1.0)
    assert max(w.classes, key=w.classes.get) == "moon"
    sharp = TargetWeights.from_diagnosis(analyse(fake_run, VOCAB), focus=3.0)
    assert sharp.classes["moon"] > w.classes["moon"] and sum(sharp.classes.values()) == pytest.approx(1.0)
    assert ("star", "moon") in w.triggers and sum(w.triggers.values()) == pytest.approx(1.0)
    assert len(w.misnamings) == 12  # the fake captions explain no hallucination: uniform over 4 x 3 pairs
    fake_run.captions[2] = "a red star and a large red moon."  # the large red moon is the square
    w = TargetWeights.from_diagnosis(analyse(fake_run, VOCAB))
    assert w.misnamings == {("square", "moon"): 1.0}
    assert w.values[("color", "circle", "blue")] == 2  # one caption and one probe confusion
    u = TargetWeights.uniform(["a", "b", "c"])
    assert list(u.classes.values()) == pytest.approx([1 / 3] * 3) and len(u.triggers) == 6
    assert u.scene_class_weights(["a", "b", "c"]) == pytest.approx((1.0, 1.0, 1.0))
    # scenes for a diagnosis hold the misnamed square (present side) and the hallucinated classes
    categories = sorted(w.classes)
    for c, x in zip(categories, w.scene_class_weights(categories)):
        triggering = sum(v for (a, _), v in w.triggers.items() if a == c)
        assert x == pytest.approx(w.classes[c] + triggering + (1.0 if c == "square" else 0.0))
    with pytest.raises(ValueError, match="positive sum"):
        TargetWeights("x", {"a": 0.0}, {})


def test_error_score_also_aims_at_classes_the_model_misses(fake_run):
    d = analyse(fake_run, VOCAB)
    by_error = TargetWeights.from_diagnosis(d, class_score="error")
    raw = {c: s.error_rate + 0.02 for c, s in d.classes.items()}
    assert by_error.classes == pytest.approx({c: v / sum(raw.values()) for c, v in raw.items()})
    by_hallucination = TargetWeights.from_diagnosis(d)
    assert d.classes["square"].miss_rate > 0 == d.classes["moon"].miss_rate  # the square is missed once
    def square_per_moon(w: TargetWeights) -> float:
        return w.classes["square"] / w.classes["moon"]

    assert square_per_moon(by_error) > square_per_moon(by_hallucination)
    with pytest.raises(ValueError, match="class_score"):
        TargetWeights.from_diagnosis(d, class_score="recall")


def test_mix_counts_are_exact():
    for n in (0, 1, 7, 100, 961):
        counts = InstructionMix().counts(n)
        assert sum(counts.values()) == n and list(counts) == list(QUESTION_KINDS)
    assert InstructionMix(caption=0.0, relation=0.0, attribute=0.0).counts(10) == {
        "existence_absent": 5, "existence_present": 5, "attribute": 0, "relation": 0, "caption": 0}


def test_questions_are_true_of_their_images(scenes):
    questions = sample_questions(scenes, TargetWeights.uniform(scenes.categories), 200, seed=0)
    assert Counter(q.kind for q in questions) == InstructionMix().counts(200)
    assert sample_questions(scenes, TargetWeights.uniform(scenes.categories), 200, seed=0) == questions
    assert sample_questions(scenes, TargetWeights.uniform(scenes.categories), 200, seed=1) != questions
    vocab = object_vocabulary(scenes)
    for q in questions:
        im = q.image
        if q.kind != "caption":
            assert q.question.endswith(POPE_SUFFIX) and q.answer in ("Yes", "No")
        if q.kind == "existence_absent":
            assert q.category not in im.categories and q.answer == "No"
            assert q.trigger is None or q.trigger in im.objects
        elif q.kind == "existence_present":
            assert q.category in im.categories and q.answer == "Yes"
        elif q.kind == "attribute":
            values = {o.attributes[q.attribute] for o in im.objects if o.category == q.category}
            assert (q.value in values) == (q.answer == "Yes")
            assert q.question.startswith(f"Is there a {q.value} {q.category} in the image?") or \
                q.question.startswith(f"Is there an {q.value} {q.category}")
        elif q.kind == "relation":
            holds = relation_of(q.subject, q.other, im, 0.15)
            assert holds == q.true_relation and (q.relation == holds) == (q.answer == "Yes")
        else:
            assert q.answer in im.captions
            assert {m.category for m in vocab.extract_mentions(q.answer)} <= im.categories  # faithful only


def test_targeting_concentrates_on_the_diagnosed_classes(scenes):
    aimed = TargetWeights("targeted", {"crescent": 1.0}, {("star", "crescent"): 1.0})
    mix = InstructionMix(trigger_share=1.0)
    questions = sample_questions(scenes, aimed, 120, seed=0, mix=mix)
    asked = [q for q in questions if q.kind in ("existence_absent", "existence_present", "attribute", "relation")]
    assert {q.category for q in asked} == {"crescent"}
    for q in questions:
        if q.kind in ("existence_absent", "caption"):  # on an image holding the trigger, without the partner
            assert "star" in q.image.categories and "crescent" not in q.image.categories
    uniform = sample_questions(scenes, TargetWeights.uniform(scenes.categories), 120, seed=0, mix=mix)
    assert len({q.category for q in uniform if q.category}) >= 6


def test_class_balance_asks_every_class_as_often_present_as_absent(scenes):
    # the trigger table names crescent's trigger star but no trigger of square: unbalanced, the
    # absent questions follow the trigger table and square is asked about present only
    aimed = TargetWeights("targeted", {"crescent": 0.5, "square": 0.5}, {("star", "crescent"): 1.0})

    def present_and_absent(mix: InstructionMix) -> tuple[Counter, Counter, list]:
        questions = sample_questions(scenes, aimed, 400, seed=0, mix=mix)
        kinds = {k: Counter(q.category for q in questions if q.kind == k) for k in ("existence_present", "existence_absent")}
        return kinds["existence_present"], kinds["existence_absent"], questions

    present, absent, _ = present_and_absent(InstructionMix(trigger_share=1.0))
    assert present["square"] > 40 and absent["square"] == 0
    present, absent, questions = present_and_absent(InstructionMix(trigger_share=1.0, class_balance=True))
    for c in ("crescent", "square"):
        assert abs(present[c] - absent[c]) <= 0.3 * present[c], (c, present[c], absent[c])
    for q in questions:
        if q.kind == "existence_absent":  # crescent negatives stay on images holding its trigger
            assert q.category not in q.image.categories
            assert (q.trigger.category == "star") if q.category == "crescent" else (q.trigger is None)
    captions = [q for q in questions if q.kind == "caption"]
    holding = sum(bool({"crescent", "square"} & q.image.categories) for q in captions)
    assert 0.55 * len(captions) < holding < len(captions), (holding, len(captions))


def test_words_are_all_in_the_scene_model_vocabulary(scenes):
    known = {w for t in scene_model_texts() for w in split_words(t.replace("<image>", " "))}
    questions = sample_questions(scenes, TargetWeights.uniform(scenes.categories), 300, seed=0)
    words = [w for q in questions for text in (q.question, q.answer) for w in split_words(text)]
    assert not set(words) - known


def test_instructions_and_pairs_round_trip_through_the_recipe_formats(scenes, tmp_path):
    questions = sample_questions(scenes, TargetWeights.uniform(scenes.categories), 30, seed=0)
    conversations = instruction_conversations(questions)
    write_instructions(tmp_path / "sft.jsonl", conversations)
    assert load_conversations(tmp_path / "sft.jsonl") == conversations
    pairs = targeted_preference_pairs(scenes, TargetWeights.uniform(scenes.categories), 12, seed=0)
    write_preferences(tmp_path / "pairs.jsonl", pairs)
    back, errors = load_preferences(tmp_path / "pairs.jsonl", known_images={im.file_name for im in scenes.images})
    assert not errors and back == pairs


def test_pairs_inject_the_diagnosed_hallucination(scenes):
    vocab = object_vocabulary(scenes)
    aimed = TargetWeights("targeted", {c: 1.0 for c in scenes.categories}, {("star", "crescent"): 1.0})
    pairs = targeted_preference_pairs(scenes, aimed, 30, seed=0, edit="add", mix=InstructionMix(trigger_share=1.0),
                                      floor=0.0)
    assert len(pairs) == 30 and {p.source for p in pairs} == {"targeted:add"}
    images = {im.file_name: im for im in scenes.images}
    for p in pairs:
        chosen = {m.category for m in vocab.extract_mentions(p.chosen)}
        rejected = {m.category for m in vocab.extract_mentions(p.rejected[0])}
        assert chosen <= images[p.image].categories  # the preferred caption is faithful
        assert rejected - chosen == {"crescent"}  # the only trigger -> hallucination pair
    assert Counter(targeted_preference_pairs(scenes, TargetWeights.uniform(scenes.categories), 30, seed=0,
                                             edit="add")[k].image for k in range(30)) != Counter(p.image for p in pairs)


def test_rename_pairs_name_a_present_object_as_the_diagnosed_misnaming(scenes):
    vocab = object_vocabulary(scenes)
    aimed = TargetWeights("targeted", {c: 1.0 for c in scenes.categories}, {("circle", "square"): 1.0},
                          misnamings={("star", "crescent"): 1.0})
    pairs = targeted_preference_pairs(scenes, aimed, 30, seed=0, mix=InstructionMix(trigger_share=1.0), floor=0.0)
    assert len(pairs) == 30 and {p.source for p in pairs} == {"targeted:rename"}
    images = {im.file_name: im for im in scenes.images}
    for p in pairs:
        chosen = [m.category for m in vocab.extract_mentions(p.chosen)]
        rejected = [m.category for m in vocab.extract_mentions(p.rejected[0])]
        assert set(chosen) <= images[p.image].categories and "crescent" not in images[p.image].categories
        assert len(rejected) == len(chosen)  # same objects, one of them named otherwise
        assert {(a, b) for a, b in zip(chosen, rejected) if a != b} == {("star", "crescent")}
    with pytest.raises(ValueError, match="edit must be"):
        targeted_preference_pairs(scenes, aimed, 1, seed=0, edit="swap")
