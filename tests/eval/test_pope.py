"""POPE: question sets per setting (against a hand-built co-occurrence table), parsing, metrics."""

import re
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halluremedy.data.coco import CocoDataset, CocoImage, CocoObject, write_coco
from halluremedy.eval.pope import (
    POPE_SETTINGS,
    PopeQuestion,
    build_pope,
    false_yes_by_source,
    parse_pope_answer,
    pope_metrics,
)
from halluremedy.prompts import pope_question

VOCABULARY = ["person", "dog", "cat", "car", "bus", "chair", "cup", "bird", "kite"]
# Image id -> annotated categories in annotation order (image ids are 1-based positions).
ANNOTATIONS = {
    1: ["person", "dog", "car"],
    2: ["person", "car", "bus"],
    3: ["cat", "chair", "cup"],
    4: ["person", "dog", "kite", "car"],  # 4 classes: the first 3 are the positives
    5: ["dog", "cat"],  # 2 classes: not eligible
    6: ["person", "person", "dog", "bus"],  # a repeated class counts once
    7: ["bird"],  # not eligible
}
ELIGIBLE = {1, 2, 3, 4, 6}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> CocoDataset:
    root = tmp_path_factory.mktemp("pope")
    write_coco(root, "val", images=[(f"{i}.png", 8, 8) for i in ANNOTATIONS], categories=VOCABULARY,
               annotations=[(i, c, (0, 0, 1, 1), {}) for i, cats in ANNOTATIONS.items() for c in cats], captions=[])
    return CocoDataset.load(root, "val", check_files=False)


def negatives_by_image(questions) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for q in questions:
        if q.label == "no":
            out.setdefault(q.image_id, []).append(q.object)
    return out


@pytest.mark.parametrize("setting", POPE_SETTINGS)
def test_structure_positives_and_negatives(dataset, setting):
    with pytest.warns(UserWarning, match="only 5 images"):
        questions = build_pope(dataset, setting, n_images=500, seed=0)
    assert {q.image_id for q in questions} == ELIGIBLE and len(questions) == 6 * len(ELIGIBLE)
    for image_id in ELIGIBLE:
        asked = [q for q in questions if q.image_id == image_id]
        assert [q.label for q in asked] == ["yes", "no"] * 3  # (positive, its negative) pairs
        # the first 3 distinct annotated classes, in annotation order
        assert [q.object for q in asked if q.label == "yes"] == list(dict.fromkeys(ANNOTATIONS[image_id]))[:3]
        negatives = [q.object for q in asked if q.label == "no"]
        assert len(set(negatives)) == 3 and not set(negatives) & set(ANNOTATIONS[image_id])
        assert set(negatives) <= set(VOCABULARY)
        assert all(q.question == pope_question(q.object) for q in asked)


def test_popular_takes_the_most_frequent_absent_classes(dataset):
    with pytest.warns(UserWarning):
        questions = build_pope(dataset, "popular", n_images=500)
    # images containing each class among the 5 sampled: person 4 (1,2,4,6), dog 3 (1,4,6), car 3 (1,2,4),
    # bus 2 (2,6), cat 1, chair 1, cup 1, kite 1, bird 0; ties in vocabulary order:
    # person, dog, car, bus, cat, chair, cup, kite, bird
    assert negatives_by_image(questions) == {
        1: ["bus", "cat", "chair"],
        2: ["dog", "cat", "chair"],
        3: ["person", "dog", "car"],
        4: ["bus", "cat", "chair"],
        6: ["car", "cat", "chair"],
    }


def test_adversarial_takes_the_most_co_occurring_absent_class(dataset):
    with pytest.warns(UserWarning):
        questions = build_pope(dataset, "adversarial", n_images=500)
    # Co-occurrence over all 7 images (each image's distinct classes):
    #   person: dog 3, car 3, bus 2, kite 1        dog: person 3, car 2, cat 1, bus 1, kite 1
    #   car: person 3, dog 2, bus 1, kite 1        cat: dog 1, chair 1, cup 1
    #   chair: cat 1, cup 1    cup: cat 1, chair 1    bus: person 2, car 1, dog 1    kite: person, dog, car 1
    # Image 1 (person, dog, car): person -> bus (2); dog -> cat (1, ties with kite, cat first); car -> kite.
    # Image 2 (person, car, bus): person -> dog (3); car -> kite; bus -> nothing left co-occurs: random.
    # Image 3 (cat, chair, cup): cat -> dog; chair, cup -> only cat/cup/chair co-occur, all present: random.
    # Image 4 (person, dog, kite, car): person -> bus; dog -> cat; kite -> nothing left: random.
    # Image 6 (person, dog, bus): person -> car; dog -> cat (ties with kite); bus -> nothing left: random.
    negatives = negatives_by_image(questions)
    assert negatives[1] == ["bus", "cat", "kite"]
    assert negatives[2][:2] == ["dog", "kite"]
    assert negatives[3][0] == "dog"
    assert negatives[4][:2] == ["bus", "cat"]
    assert negatives[6][:2] == ["car", "cat"]


def test_same_seed_same_questions_and_same_images_across_settings(dataset):
    runs = {s: build_pope(dataset, s, n_images=3, seed=7) for s in POPE_SETTINGS}
    assert all(build_pope(dataset, s, n_images=3, seed=7) == runs[s] for s in POPE_SETTINGS)
    images = [[q.image_id for q in runs[s]] for s in POPE_SETTINGS]
    assert images[0] == images[1] == images[2] and set(images[0]) <= ELIGIBLE and len(set(images[0])) == 3
    by_seed = {tuple(q.image_id for q in build_pope(dataset, "random", n_images=3, seed=s)) for s in range(8)}
    assert len(by_seed) > 1  # the seed does choose the images


def test_no_eligible_image_is_an_error_naming_the_dataset(tmp_path):
    write_coco(tmp_path, "val", images=[("1.png", 8, 8)], categories=["dog", "cat", "cup"],
               annotations=[(1, "dog", (0, 0, 1, 1), {})], captions=[])
    dataset = CocoDataset.load(tmp_path, "val", check_files=False)
    with pytest.raises(ValueError, match=re.escape(f"no image in dataset {tmp_path} split 'val'")):
        build_pope(dataset, "random")


@pytest.mark.filterwarnings("ignore:POPE")
def test_too_few_absent_classes_is_an_error(tmp_path):
    write_coco(tmp_path, "val", images=[("1.png", 8, 8)], categories=["dog", "cat", "cup", "bus"],
               annotations=[(1, c, (0, 0, 1, 1), {}) for c in ["dog", "cat", "cup"]], captions=[])
    dataset = CocoDataset.load(tmp_path, "val", check_files=False)
    with pytest.raises(ValueError, match=r"image 1 .* leaves only 1 absent classes"):
        build_pope(dataset, "random")


def test_argument_errors(dataset):
    with pytest.raises(ValueError, match="setting must be one of"):
        build_pope(dataset, "hard")
    with pytest.raises(ValueError, match="n_images >= 1"):
        build_pope(dataset, "random", n_images=0)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_negatives_are_absent_and_distinct_on_random_datasets(data):
    """Invariants on random in-memory datasets, every setting."""
    n_classes = data.draw(st.integers(6, 12))
    vocabulary = [f"class{k}" for k in range(n_classes)]
    per_image = st.lists(st.sampled_from(vocabulary), min_size=0, max_size=n_classes - 3)
    annotations = data.draw(st.lists(per_image, min_size=1, max_size=12))
    images = [CocoImage(i + 1, f"{i}.png", Path(f"{i}.png"), 8, 8,
                        tuple(CocoObject(c, (0, 0, 1, 1)) for c in cats), ()) for i, cats in enumerate(annotations)]
    dataset = CocoDataset(Path("mem"), "val", images, vocabulary, None)
    eligible = [im for im in images if len(im.categories) >= 3]
    for setting in POPE_SETTINGS:
        if not eligible:
            with pytest.raises(ValueError):
                build_pope(dataset, setting, n_images=4)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            questions = build_pope(dataset, setting, n_images=4, seed=data.draw(st.integers(0, 3)))
        assert len(caught) == (len(eligible) < 4)  # warned exactly when short of images
        assert len(questions) == 6 * min(4, len(eligible))
        for image_id, negatives in negatives_by_image(questions).items():
            assert len(set(negatives)) == 3
            assert not set(negatives) & dataset.by_id(image_id).categories


@pytest.mark.parametrize(("answer", "parsed"), [
    ("Yes", "yes"), ("No", "no"), ("no", "no"), ("No.", "no"), ("No\n", "no"), (" No", "no"),
    ("Yes, there is a dog in the image.", "yes"),
    ("No, there is no dog in the image.", "no"),
    ("There is not a dog.", "no"),
    ("There isn't a dog.", "no"),  # a word ending in n't
    ("I don't see one", "no"),
    ("Yes. But no cat.", "yes"),  # only the text before the first '.'
    ("Yes, but not sure.", "no"),
    ("No,", "no"),  # commas dropped
    ("NO", "yes"),  # POPE's word list is case-sensitive: only No / not / no
    ("Nothing", "yes"), ("Nope", "yes"), ("", "yes"),
])
def test_parse_pope_answer(answer, parsed):
    assert parse_pope_answer(answer) == parsed


def test_metrics_hand_worked():
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    predictions = ["yes", "yes", "no", "yes", "no", "no"]
    # tp = 2 (0, 1), fn = 1 (2), fp = 1 (3), tn = 2 (4, 5)
    m = pope_metrics(predictions, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (2, 1, 2, 1, 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert m["recall"] == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert m["f1"] == pytest.approx(2 / 3)  # 2 * (2/3) * (2/3) / (4/3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)


def test_metrics_always_yes():
    m = pope_metrics(["yes"] * 4, ["yes", "yes", "no", "no"])
    # tp 2, fp 2: precision 1/2, recall 1, F1 = 2 * 0.5 * 1 / 1.5 = 2/3, accuracy 1/2, yes-ratio 1
    assert (m["precision"], m["recall"], m["accuracy"], m["yes_ratio"]) == (0.5, 1.0, 0.5, 1.0)
    assert m["f1"] == pytest.approx(2 / 3)


def test_metrics_zero_denominators_are_zero():
    m = pope_metrics(["no", "no"], ["yes", "no"])  # no "yes" prediction: precision 0/0
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.5, 0.0)
    m = pope_metrics(["yes", "no"], ["no", "no"])  # no "yes" label: recall 0/0
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)


def test_metrics_input_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        pope_metrics(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="no answers"):
        pope_metrics([], [])
    with pytest.raises(ValueError, match="prediction 'Yes' is not"):
        pope_metrics(["Yes"], ["yes"])


def test_false_yes_by_source_hand_worked():
    partners = {"cat": ("dog",), "dog": ("cat",)}
    present = {1: {"cat", "car"}, 2: {"car", "bus"}}
    q = [PopeQuestion(i, obj, label, pope_question(obj)) for i, obj, label in [
        (1, "car", "yes"),  # a positive: never counted
        (1, "dog", "no"),  # absent partner of the present cat
        (1, "bus", "no"),
        (2, "dog", "no"),  # no cat in image 2: not a partner negative there
        (2, "cat", "no"),
    ]]
    out = false_yes_by_source(q, ["yes", "yes", "no", "yes", "no"], present, partners)
    assert out == {"partner": {"n": 1, "yes": 1, "yes_rate": 1.0},
                   "other": {"n": 3, "yes": 1, "yes_rate": 1 / 3}}
    assert false_yes_by_source(q[:1], ["no"], present, partners)["partner"] == {"n": 0, "yes": 0, "yes_rate": 0.0}
    with pytest.raises(ValueError, match="1 predictions but 2 questions"):
        false_yes_by_source(q[:2], ["no"], present, partners)
