"""CHAIR compat="reference": conformance with the original code, its tokenizer and singulariser, signatures."""

import json
import re
from pathlib import Path

import pytest

from halluremedy.data.coco import CocoDataset, write_coco
from halluremedy.data.scenes import make_dataset
from halluremedy.eval.chair import (
    COMPAT_MODES,
    ObjectVocabulary,
    chair,
    chair_signature,
    coco_vocabulary,
    ground_truth_objects,
)
from halluremedy.eval.chair_reference import (
    DEFAULT_REVISION,
    REFERENCE_REVISIONS,
    ReferenceVocabulary,
    double_words,
    pattern_singularize,
    reference_tokenize,
    treebank_tokenize,
)
from halluremedy.eval.coco_synonyms import COCO_CLASSES
from halluremedy.eval.run import EvalConfig, evaluate, format_table, object_vocabulary
from halluremedy.models.generate import Decoding

REPO = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parents[3] / "shared" / "chair_reference_cases" / "cases.jsonl"


@pytest.fixture(scope="module")
def ref() -> ReferenceVocabulary:
    return ReferenceVocabulary()


@pytest.fixture(scope="module")
def ours() -> ObjectVocabulary:
    return ObjectVocabulary.coco()


def categories(vocab, caption: str) -> list[str]:
    return [m.category for m in vocab.extract_mentions(caption)]


def load_cases() -> list[dict]:
    assert CASES.is_file(), f"conformance cases missing: {CASES} (shared/ must sit beside the checkout)"
    return [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- conformance -----------------------------------------------------------------------------

def test_every_case_matches_the_original_code(ref):
    cases = load_cases()
    assert len(cases) == 600
    wrong = []
    for case in cases:
        mentions = categories(ref, case["caption"])
        hallucinated = [c for c in mentions if c not in case["ground_truth"]]
        if mentions != case["reference_mentions"] or hallucinated != case["reference_hallucinated"]:
            wrong.append((case["caption"], mentions, case["reference_mentions"]))
    assert not wrong, f"{len(wrong)} of {len(cases)} cases differ, e.g. {wrong[:3]}"


def test_case_scores_through_chair(ref):
    cases = load_cases()
    result = chair({c["image_id"]: c["caption"] for c in cases}, {c["image_id"]: set(c["ground_truth"]) for c in cases},
                   ref)
    assert result.n_mentions == sum(len(c["reference_mentions"]) for c in cases)
    assert result.n_hallucinated_mentions == sum(len(c["reference_hallucinated"]) for c in cases)
    assert result.n_hallucinated_captions == sum(bool(c["reference_hallucinated"]) for c in cases)


# ---- the tokenizer ---------------------------------------------------------------------------

@pytest.mark.parametrize(("sentence", "tokens"), [
    ("a dog's bowl and a ball .", ["a", "dog", "'s", "bowl", "and", "a", "ball", "."]),
    ("a hot-dog near a teddy-bear.", ["a", "hot-dog", "near", "a", "teddy-bear", "."]),
    ("dogs, cats: birds; (a cow)", ["dogs", ",", "cats", ":", "birds", ";", "(", "a", "cow", ")"]),
    ('he said "a dog" isn\'t here!', ["he", "said", "``", "a", "dog", "''", "is", "n't", "here", "!"]),
    ("st. louis has 1,000 cats.", ["st.", "louis", "has", "1,000", "cats", "."]),
    ("i cannot go--now", ["i", "can", "not", "go", "--", "now"]),
])
def test_treebank_tokenize(sentence, tokens):
    assert treebank_tokenize(sentence) == tokens


def test_reference_tokenize_lowercases_and_splits_sentences_at_period_space():
    assert reference_tokenize("A Dog. Two cats! A cow? A dog.A cat.") == [
        "a", "dog", ".", "two", "cats", "!", "a", "cow", "?", "a", "dog.a", "cat", "."]


# ---- the singulariser ------------------------------------------------------------------------

@pytest.mark.parametrize(("word", "singular"), [
    ("bus", "bu"), ("buses", "bus"), ("ties", "ty"), ("glass", "glas"), ("glasses", "glass"), ("tennis", "tenni"),
    ("canoes", "cano"), ("shoes", "shoe"), ("doggies", "doggies"), ("cookies", "cookies"), ("ponies", "pony"),
    ("women", "woman"), ("policemen", "policeman"), ("people", "person"), ("children", "child"), ("oxen", "ox"),
    ("geese", "goose"), ("mice", "mouse"), ("knives", "knife"), ("calves", "calf"), ("stoves", "stove"),
    ("sandwiches", "sandwich"), ("toothbrushes", "toothbrush"), ("skis", "ski"), ("scissors", "scissors"),
    ("luggage", "luggage"), ("sheep", "sheep"), ("bases", "basis"), ("octopi", "octopus"), ("hot-dogs", "hot-dog"),
    ("mothers-in-law", "mother-in-law"), ("dogs'", "dog's"),
])
def test_pattern_singularize(word, singular):
    assert pattern_singularize(word) == singular


# ---- what the issue names --------------------------------------------------------------------

def test_singular_bus_is_never_counted_but_buses_are(ref):
    assert categories(ref, "A bus on the street.") == []
    assert categories(ref, "Two buses on the street.") == ["bus"]


def test_ties_are_never_counted(ref):
    assert categories(ref, "A man with two ties.") == ["person"]
    assert categories(ref, "A man with a tie.") == ["person", "tie"]


def test_iphone_is_stored_capitalised_so_never_matches(ref):
    assert categories(ref, "An iPhone and a smartphone.") == ["cell phone"]


def test_motor_bike_entry_never_matches_but_motor_cycle_does(ref):
    assert categories(ref, "A motor bike.") == []
    assert categories(ref, "A motor cycle.") == ["motorcycle"]
    assert categories(ref, "A cheesecake and a cupcake.") == ["cake"]


def test_two_word_rules(ref):
    assert categories(ref, "A baby elephant and a baby.") == ["elephant", "person"]
    assert categories(ref, "A passenger jet, a passenger train and a passenger.") == ["airplane", "train", "person"]
    assert categories(ref, "A bow tie on a toilet seat.") == ["tie", "toilet"]
    assert categories(ref, "Two wine glasses and a wine glass.") == ["wine glass", "wine glass"]
    assert categories(ref, "A player at home plate.") == ["person"]
    assert categories(ref, "A seat beside the toilet.") == ["toilet"]
    assert categories(ref, "A seat in the park.") == ["chair"]
    assert categories(ref, "A stove top oven.") == ["oven", "oven"]  # three words: never merged


def test_mentions_carry_the_words_and_the_word_counted(ref):
    # tokens: a(0) passenger(1) jet(2) near(3) two(4) hot(5) dogs(6) .(7)
    assert [(m.text, m.lemma, m.category, m.token_index) for m in ref.extract_mentions("A passenger jet near two hot dogs.")] == [
        ("passenger jet", "jet", "airplane", 1), ("hot dogs", "hot dog", "hot dog", 5)]


def test_revisions_differ_in_train_track_only():
    assert set(REFERENCE_REVISIONS) == {"585f2d9", "e36ff5e"} and DEFAULT_REVISION == "585f2d9"
    assert set(double_words("e36ff5e")) - set(double_words("585f2d9")) == {"train track"}
    assert categories(ReferenceVocabulary("585f2d9"), "A train on train tracks.") == ["train", "train"]
    assert categories(ReferenceVocabulary("e36ff5e"), "A train on train tracks.") == ["train"]
    with pytest.raises(ValueError, match="unknown CHAIR reference revision 'x'"):
        ReferenceVocabulary("x")


def test_reference_classes_are_the_80_coco_classes(ref):
    assert ref.classes == COCO_CLASSES


# ---- the documented differences ---------------------------------------------------------------

def documented_differences() -> list[tuple[str, list[str], list[str]]]:
    text = (REPO / "docs" / "chair.md").read_text(encoding="utf-8")
    section = text.split("## Every difference between the modes", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            rows.append((cells[3], *([] if c == "—" else [x.strip() for x in c.split(",")] for c in cells[4:])))
    return rows


def test_every_documented_difference_holds(ref, ours):
    rows = documented_differences()
    assert len(rows) >= 20
    for caption, in_reference, in_halluremedy in rows:
        assert (categories(ref, caption), categories(ours, caption)) == (in_reference, in_halluremedy), caption
        assert in_reference != in_halluremedy, caption


@pytest.mark.parametrize(("words", "known_by"), [
    (["surfer", "umpire", "pedestrian", "tourist", "jockey", "catcher", "cyclist", "tram", "limousine", "mug",
      "penguin", "mitt", "racquet", "teddy", "hotdog", "hair dryer", "german shepherd"], "halluremedy"),
    (["notebook", "telephone", "bow", "container", "bagel", "pancake", "panda", "sub", "turkey"], "reference"),
])
def test_vocabulary_gaps(ref, ours, words, known_by):
    for word in words:
        found = {"reference": categories(ref, f"A {word}."), "halluremedy": categories(ours, f"A {word}.")}
        assert len(found[known_by]) == 1 and found[{"reference": "halluremedy", "halluremedy": "reference"}[known_by]] == [], word


# ---- signatures ------------------------------------------------------------------------------

SIGNATURE = re.compile(r"chair:(\w+)\|syn:([\w.@-]+)\|tok:([\w.-]+)\|sing:([\w.-]+)\|v1")


def test_signatures_name_mode_table_tokenizer_singulariser(ref, ours):
    m = SIGNATURE.fullmatch(ref.signature)
    assert m and m.group(1) == "reference" and m.group(2).startswith("lisaanne-2018@585f2d9.")
    assert m.group(3) == "treebank" and m.group(4) == "pattern-3.6"
    m = SIGNATURE.fullmatch(ours.signature)
    assert m and m.group(1) == "halluremedy" and m.group(2).startswith("halluremedy-coco.")
    assert chair_signature(ref) == ref.signature
    assert ReferenceVocabulary("e36ff5e").signature != ref.signature
    assert ReferenceVocabulary().signature == ref.signature and ObjectVocabulary.coco().signature == ours.signature
    scene = ObjectVocabulary.from_synonyms({"circle": ["disc"]})
    assert SIGNATURE.fullmatch(scene.signature).group(2).startswith("dataset.")
    assert scene.signature != ObjectVocabulary.from_synonyms({"circle": ["ring"]}).signature


def test_every_chair_result_carries_its_signature(ref, ours):
    for vocab in (ref, ours):
        data = json.loads(json.dumps(chair({1: "A dog."}, {1: {"dog"}}, vocab).to_dict()))
        assert data["signature"] == vocab.signature and data["chair_s"] == 0.0


def test_eval_json_carries_the_signature(tiny_llava_factory, tmp_path):
    dataset = make_dataset(tmp_path / "scenes", "val", 6, seed=2, progress=False)
    model, processor = tiny_llava_factory(0)
    cfg = EvalConfig(chair_images=3, pope_images=0, pope_settings=(), caption_decodings=(Decoding(0.0, 4),),
                     progress=False)
    result = evaluate(model, processor, dataset, cfg)
    signature = object_vocabulary(dataset).signature
    assert result["chair_signature"] == result["chair"]["greedy"]["signature"] == signature
    assert signature.startswith("chair:halluremedy|syn:dataset.") and result["config"]["chair_compat"] == "halluremedy"
    with pytest.raises(ValueError, match="knows the 80 COCO classes only"):
        evaluate(model, processor, dataset, EvalConfig(chair_compat="reference", progress=False))


def test_format_table_prints_the_signature_under_the_table(ref):
    table = format_table({"m": {"CHAIR_s/greedy": 0.5}}, ref.signature)
    assert table.splitlines()[-1] == f"CHAIR signature: {ref.signature}"
    assert "signature" not in format_table({"m": {"CHAIR_s/greedy": 0.5}})


def test_coco_vocabulary_modes():
    assert COMPAT_MODES == ("halluremedy", "reference")
    assert isinstance(coco_vocabulary(), ObjectVocabulary)
    assert coco_vocabulary("reference", reference_revision="e36ff5e").revision == "e36ff5e"
    with pytest.raises(ValueError, match="unknown CHAIR compat mode 'sacrebleu'"):
        coco_vocabulary("sacrebleu")
    with pytest.raises(ValueError, match="compat='reference' only"):
        coco_vocabulary("halluremedy", reference_revision="e36ff5e")


# ---- ground truth and datasets ---------------------------------------------------------------

def test_ground_truth_captions_are_parsed_in_the_same_mode(tmp_path, ref, ours):
    write_coco(tmp_path, "val", images=[("1.png", 8, 8)], categories=list(COCO_CLASSES),
               annotations=[(1, "person", (0, 0, 2, 2), {})], captions=[(1, "A keeper feeds a panda.")])
    image = CocoDataset.load(tmp_path, "val", check_files=False).by_id(1)
    assert ground_truth_objects(image, ref) == {"person", "bear"}
    assert ground_truth_objects(image, ours) == {"person"}


def test_reference_mode_refuses_a_dataset_with_its_own_classes(tmp_path):
    write_coco(tmp_path, "val", images=[("1.png", 8, 8)], categories=["circle"],
               annotations=[(1, "circle", (0, 0, 2, 2), {})], captions=[(1, "A disc.")],
               synonyms={"circle": ["circle", "disc"]})
    dataset = CocoDataset.load(tmp_path, "val", check_files=False)
    assert object_vocabulary(dataset).signature.startswith("chair:halluremedy|syn:dataset.")
    with pytest.raises(ValueError, match=r"knows the 80 COCO classes only; this split has \['circle'\]"):
        object_vocabulary(dataset, "reference")
