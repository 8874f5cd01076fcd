"""Diagnosis: probe construction, the analysis of fake answers (exact counts), and a real model run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers import CATS, VOCAB, WORDS, o, truth

from halluremedy.data.coco import CocoObject
from halluremedy.diagnose import (
    AnnotationBackend,
    Detection,
    DetectorBackend,
    Diagnosis,
    ProbeConfig,
    analyse,
    attribute_probes,
    diagnose,
    existence_probes,
    run_probes,
)
from halluremedy.diagnose.probes import misnamed_objects, stated_attributes, stated_counts
from halluremedy.prompts import pope_question


def test_existence_probes_ask_every_class():
    im = truth(1, o("circle"), o("star"))
    probes = existence_probes(im, CATS)
    assert [p.category for p in probes] == CATS
    assert [p.expected for p in probes] == ["yes", "no", "yes", "no"]
    assert probes[0].question == pope_question("circle") == "Is there a circle in the image?"


def test_attribute_probes_pair_a_true_and_a_false_value():
    im = truth(1, o("circle", "red"), o("circle", "blue"), o("star", "green"))
    probes = attribute_probes(im, "color", ["blue", "green", "red"], np.random.default_rng(0))
    assert [(p.category, p.expected) for p in probes] == [("circle", "yes"), ("circle", "no"), ("star", "yes"),
                                                          ("star", "no")]
    for p in probes:
        true = {"circle": {"red", "blue"}, "star": {"green"}}[p.category]
        assert (p.value in true) == (p.expected == "yes")
        assert set(p.true_values) == true
        assert p.question == f"Is there a {p.value} {p.category} in the image?"
    # a class whose every value is taken gets only the "yes" probe
    one = attribute_probes(truth(2, o("star", "red")), "color", ["red"], np.random.default_rng(0))
    assert [p.expected for p in one] == ["yes"]


def test_stated_attributes_and_counts():
    caption = "two small red discs, a blue square and a moon."
    assert stated_attributes(caption, VOCAB, WORDS) == [("circle", "color", "red"), ("circle", "size", "small"),
                                                        ("square", "color", "blue")]
    assert stated_counts(caption, VOCAB, WORDS) == {"circle": 2, "square": 1, "moon": 1}
    assert stated_counts("three circles and a circle.", VOCAB, WORDS) == {"circle": 4}


def test_analyse_counts_errors_exactly(fake_run):
    d = analyse(fake_run, VOCAB, {"model": "fake"})
    moon, square, circle = d.classes["moon"], d.classes["square"], d.classes["circle"]
    assert (moon.n_present, moon.n_absent, moon.caption_fp) == (0, 3, 2)
    assert moon.caption_fp_rate == pytest.approx(2 / 3)
    assert (moon.probe_yes_absent, moon.probe_absent, moon.probe_fp_rate) == (3, 3, 1.0)
    assert moon.hallucination_rate == pytest.approx((2 / 3 + 1.0) / 2)
    assert (square.n_present, square.caption_fn, square.caption_fn_rate) == (2, 1, 0.5)
    assert square.probe_fn_rate == 0.0 and square.caption_fp == 0
    assert square.miss_rate == pytest.approx((0.5 + 0.0) / 2)  # caption and probe FN rates
    assert square.error_rate == pytest.approx((square.hallucination_rate + square.miss_rate) / 2)
    assert moon.miss_rate == 0.0 and moon.error_rate == pytest.approx(moon.hallucination_rate / 2)  # never present
    assert (circle.count_checked, circle.count_wrong) == (1, 1)  # "two circles", there is one
    assert d.classes["star"].count_checked == 2 and d.classes["star"].count_wrong == 0
    assert d.worst_classes(1)[0].category == "moon"
    assert d.summary["chair_s"] == pytest.approx(2 / 3) and d.summary["probe_yes_ratio"] == 1.0
    assert d.summary["count_accuracy"] == pytest.approx(4 / 5)  # 5 checked (star, circle | star, square | square)

    # "blue circle" where the circle is red: a caption confusion; the false-value probe answered yes: a probe one
    by_source = {(a.source, a.attribute, a.category, a.true, a.said): a.count for a in d.attribute_confusions}
    assert by_source[("caption", "color", "circle", "red", "blue")] == 1
    assert by_source[("probe", "color", "circle", "red", "blue")] == 1
    assert d.attribute_accuracy["color"]["caption_checked"] == 4  # red star, blue circle, red star, red square
    assert d.attribute_accuracy["color"]["caption_wrong"] == 1

    # star -> moon: with a star (images 1, 2) the caption names a moon 2/2 times, without a star 0/1
    top = d.top_triggers(1)[0]
    assert (top.present, top.hallucinated) == ("star", "moon")
    assert (top.opportunities, top.caption_count, top.base_opportunities, top.caption_base_count) == (2, 2, 1, 0)
    assert top.rates("caption") == (1.0, 0.0) and top.rates("probe") == (1.0, 1.0)
    assert top.excess == pytest.approx(2.0)
    assert d.examples[0]["hallucinated"] == ["moon"]


def test_misnamings_match_the_words_of_a_hallucinated_mention_to_a_present_object():
    image = truth(1, o("circle", "red", "large"), o("square", "red", "small"), o("star", "blue", "small"))
    # the large red moon can only be the circle; the red moon fits circle and square (neither named)
    assert misnamed_objects("a large red moon and a blue star.", image, VOCAB, WORDS) == ([("circle", "moon", 1.0)], 1)
    assert misnamed_objects("a red moon.", image, VOCAB, WORDS) == ([("circle", "moon", 0.5), ("square", "moon", 0.5)], 1)
    # the circle is named, so the red moon is the unnamed square; a bare "moon" and a green one stay unexplained
    assert misnamed_objects("a red circle and a red moon.", image, VOCAB, WORDS) == ([("square", "moon", 1.0)], 1)
    assert misnamed_objects("a moon and a green moon.", image, VOCAB, WORDS) == ([], 2)
    assert misnamed_objects("a red circle.", image, VOCAB, WORDS) == ([], 0)


def test_analyse_tallies_misnamings(fake_run):
    captions = {1: "a large red star and a red moon.", 2: "a red moon and a large red square.", 3: "a square."}
    d = analyse(replace(fake_run, captions=captions), VOCAB)
    # image 1: the red moon is the unnamed red circle; image 2: the unnamed red star
    assert [(m.true, m.said, m.count) for m in d.misnamings] == [("circle", "moon", 1.0), ("star", "moon", 1.0)]
    assert d.summary["misnamed_share"] == 1.0
    d = analyse(replace(fake_run, captions={**captions, 3: "a square and a moon."}), VOCAB)
    assert d.summary["misnamed_share"] == pytest.approx(2 / 3)
    # every hallucinated mention has one source (halluremedy.eval.sources); the prior share is two of them
    shares = [d.summary[f"source_{k}"] for k in ("partner", "after_all", "other")]
    assert sum(shares) == pytest.approx(1.0) and d.summary["prior_share"] == pytest.approx(shares[0] + shares[1])


def test_diagnosis_round_trips_through_json(fake_run, tmp_path):
    d = analyse(replace(fake_run, captions={**fake_run.captions, 2: "a red star and a large red moon."}), VOCAB,
                {"model": "fake"})
    assert d.misnamings  # the large red moon is the red square of image 2
    d.save(tmp_path / "d.json")
    back = Diagnosis.load(tmp_path / "d.json")
    assert back.to_dict() == d.to_dict()
    assert back.worst_classes(2) == d.worst_classes(2)


def test_analyse_rejects_missing_answers(fake_run):
    fake_run.answers.pop()
    with pytest.raises(ValueError, match="answers"):
        analyse(fake_run, VOCAB)


def test_diagnose_runs_a_model_over_annotated_images(tiny_coco, tiny_llava_factory):
    model, processor = tiny_llava_factory(0)
    cfg = ProbeConfig(images=4, max_new_tokens=6, batch_size=3)
    d = diagnose(model, processor, tiny_coco, cfg, model_name="tiny")
    assert set(d.classes) == {"square", "circle", "bar"}
    assert sum(s.n_present + s.n_absent for s in d.classes.values()) == 4 * 3
    assert d.meta["backend"] == "annotations" and d.meta["model"] == "tiny"
    assert all(s.probe_present + s.probe_absent == 4 for s in d.classes.values())  # every class, every image
    assert any("'size'" in why and "no image annotates it" in why for why in d.meta["skipped"])
    assert d.attribute_accuracy["color"]["probe_checked"] > 0
    assert 0.0 <= d.summary["mean_hallucination_rate"] <= 1.0
    assert Diagnosis.from_dict(d.to_dict()).to_dict() == d.to_dict()


def test_attribute_probes_skip_words_the_tokenizer_lacks(tiny_coco, tiny_llava_factory):
    model, processor = tiny_llava_factory(0)
    vocab = processor.tokenizer.get_vocab()
    assert "white" in vocab and "purple" not in vocab
    tiny_coco.images[0] = replace(tiny_coco.images[0], objects=(CocoObject("square", (2, 2, 12, 12),
                                                                           {"color": "purple"}),))
    run = run_probes(model, processor, tiny_coco, ProbeConfig(images=6, count_prompt=None, max_new_tokens=2))
    assert any("purple" in why for why in run.skipped)
    assert not [p for p in run.probes if p.kind == "attribute"]
    assert run.short_captions == {}


def test_detector_backend_thresholds_and_filters_classes(tiny_coco, tiny_llava_factory):
    calls = []

    def detect(pixels):
        calls.append(pixels.size)
        return [Detection("circle", (0, 0, 8, 8), 0.9, {"color": "white"}), Detection("bar", (0, 0, 4, 4), 0.1),
                Detection("zebra", (0, 0, 4, 4), 0.99)]

    backend = DetectorBackend(detect, ["square", "circle", "bar"], threshold=0.5)
    assert backend.name == "detector@0.5"
    im = tiny_coco.images[0]
    assert [x.category for x in backend.objects(im, tiny_coco.load_image(im))] == ["circle"]
    assert [x.category for x in AnnotationBackend().objects(im, None)] == ["square"]
    model, processor = tiny_llava_factory(0)
    run = run_probes(model, processor, tiny_coco, ProbeConfig(images=3, caption_truth=False, max_new_tokens=2),
                     backend)
    assert len(calls) == 1 + 3 and calls[-1] == (32, 32)
    assert all(t.classes == {"circle"} for t in run.images)
    with pytest.raises(ValueError, match="threshold"):
        DetectorBackend(detect, ["circle"], threshold=1.5)
