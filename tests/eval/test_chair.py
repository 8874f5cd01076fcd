"""CHAIR: mention parsing, the published special rules, ground truth, and hand-worked scores."""

import json

import pytest

from halluremedy.data.coco import CocoDataset, write_coco
from halluremedy.eval.chair import Mention, ObjectVocabulary, chair, class_row, ground_truth_objects


@pytest.fixture(scope="module")
def coco() -> ObjectVocabulary:
    return ObjectVocabulary.coco()


def categories(vocab: ObjectVocabulary, caption: str) -> list[str]:
    return [m.category for m in vocab.extract_mentions(caption)]


# ---- parsing ---------------------------------------------------------------------------------

def test_mentions_carry_text_lemma_class_and_token_index(coco):
    # tokens: a(0) man(1) and(2) two(3) hot(4) -(5) dogs(6) .(7)
    assert coco.extract_mentions("A man and two hot-dogs.") == [
        Mention("man", "man", "person", 1), Mention("hot dogs", "hot dog", "hot dog", 4)]


def test_every_mention_counts_repeats_included(coco):
    assert categories(coco, "A dog chases a dog; two dogs and a puppy watch.") == ["dog"] * 4


@pytest.mark.parametrize(("phrase", "category"), [
    ("motor bike", "motorcycle"), ("motor cycle", "motorcycle"), ("air plane", "airplane"),
    ("traffic light", "traffic light"), ("street light", "traffic light"), ("traffic signal", "traffic light"),
    ("stop light", "traffic light"), ("fire hydrant", "fire hydrant"), ("stop sign", "stop sign"),
    ("parking meter", "parking meter"), ("suit case", "suitcase"), ("sports ball", "sports ball"),
    ("baseball bat", "baseball bat"), ("baseball glove", "baseball glove"), ("tennis racket", "tennis racket"),
    ("wine glass", "wine glass"), ("hot dog", "hot dog"), ("cell phone", "cell phone"),
    ("mobile phone", "cell phone"), ("teddy bear", "teddy bear"), ("hair drier", "hair drier"),
    ("potted plant", "potted plant"), ("bow tie", "tie"), ("laptop computer", "laptop"),
    ("stove top oven", "oven"),
])
def test_published_phrases_merge_into_one_mention(coco, phrase, category):
    assert categories(coco, f"There is a {phrase} here.") == [category]
    plural = phrase + ("es" if phrase.endswith("s") else "s")  # "wine glasses", "cell phones"
    assert categories(coco, f"Two {plural}.") == [category]


@pytest.mark.parametrize(("word", "category"), [
    ("man", "person"), ("woman", "person"), ("boy", "person"), ("girl", "person"), ("child", "person"),
    ("people", "person"), ("player", "person"), ("skier", "person"), ("table", "dining table"),
    ("desk", "dining table"), ("television", "tv"), ("monitor", "tv"), ("seat", "chair"), ("stool", "chair"),
    ("skis", "skis"), ("ski", "skis"), ("sofa", "couch"), ("puppy", "dog"), ("kitten", "cat"),
])
def test_published_synonyms(coco, word, category):
    assert coco.lookup(word) == category


def test_phrase_wins_over_its_words(coco):
    # "hot dog" is no dog, "teddy bear" no bear, "microwave oven" no oven
    assert categories(coco, "A hot dog, a teddy bear and a microwave oven.") == ["hot dog", "teddy bear", "microwave"]


def test_punctuation_other_than_hyphen_breaks_a_phrase(coco):
    assert categories(coco, "It was hot, dog.") == ["dog"]
    assert categories(coco, "A teddy-bear.") == ["teddy bear"]


# ---- the special rules -----------------------------------------------------------------------

def test_baby_and_adult_animals_are_animals_not_people(coco):
    assert categories(coco, "A baby elephant walks with adult elephants.") == ["elephant", "elephant"]
    assert categories(coco, "Baby giraffes and an adult zebra.") == ["giraffe", "zebra"]
    assert categories(coco, "A baby animal.") == []  # no class, and no person either
    assert categories(coco, "A mother holds her baby.") == ["person", "person"]  # a baby alone is a person


def test_passenger_jet_and_train_are_vehicles_not_people(coco):
    assert categories(coco, "A passenger jet on the runway.") == ["airplane"]
    assert categories(coco, "A passenger train at the station.") == ["train"]
    assert categories(coco, "Passengers board the bus.") == ["person", "bus"]


def test_bow_tie_is_a_tie(coco):
    assert categories(coco, "A man in a bow tie.") == ["person", "tie"]


def test_toilet_seat_is_a_toilet(coco):
    assert categories(coco, "A toilet seat.") == ["toilet"]


def test_seat_is_not_a_chair_when_a_toilet_is_mentioned(coco):
    assert categories(coco, "A toilet with its seat up.") == ["toilet"]
    assert categories(coco, "The seat is next to the toilet.") == ["toilet"]
    assert categories(coco, "A seat in the park.") == ["chair"]


def test_home_plate_and_train_track_are_dropped(coco):
    assert categories(coco, "A player stands at home plate.") == ["person"]
    assert categories(coco, "Train tracks run through the town.") == []
    assert categories(coco, "A train on the train tracks.") == ["train"]
    assert coco.lookup("home plate") is None and coco.lookup("train track") is None


# ---- vocabularies from a dataset's own table -------------------------------------------------

def test_from_synonyms_with_multi_word_forms():
    vocab = ObjectVocabulary.from_synonyms(
        {"circle": ["circle", "disc"], "square": ["square", "box"], "triangle": ["pointy shape"]})
    assert vocab.classes == ("circle", "square", "triangle")
    # discs(circle) pointy shape(triangle) boxes(square) triangle(triangle: the class name itself)
    assert categories(vocab, "Two discs, a pointy shape and boxes near a triangle.") == [
        "circle", "triangle", "square", "triangle"]


def test_conflicting_surface_forms_are_rejected():
    with pytest.raises(ValueError, match=r"'box'.*claimed by both"):
        ObjectVocabulary.from_synonyms({"square": ["box"], "cube": ["boxes"]})  # boxes reads as box
    with pytest.raises(ValueError, match="not a vocabulary class"):
        ObjectVocabulary(["cat"], {"kitten": "feline"})
    with pytest.raises(ValueError, match="must be words"):
        ObjectVocabulary.from_synonyms({"cat": ["cat!"]})


# ---- ground truth ----------------------------------------------------------------------------

def write_tiny_coco(root) -> CocoDataset:
    write_coco(
        root, "val", images=[("1.png", 8, 8), ("2.png", 8, 8)], categories=["person", "dog", "bench", "cat"],
        annotations=[(1, "person", (0, 0, 2, 2), {}), (1, "dog", (1, 1, 2, 2), {}), (2, "cat", (0, 0, 4, 4), {})],
        captions=[(1, "A woman walks her dog past a bench."), (1, "A lady and her puppy."), (2, "A kitten.")])
    return CocoDataset.load(root, "val", check_files=False)


def test_ground_truth_is_annotations_and_reference_caption_objects(tmp_path, coco):
    dataset = write_tiny_coco(tmp_path)
    # annotated {person, dog}; captions add bench (woman, dog, lady, puppy are already there)
    assert ground_truth_objects(dataset.by_id(1), coco) == {"person", "dog", "bench"}
    assert ground_truth_objects(dataset.by_id(2), coco) == {"cat"}


def test_ground_truth_rejects_a_vocabulary_that_lacks_the_annotated_classes(tmp_path):
    dataset = write_tiny_coco(tmp_path)
    with pytest.raises(ValueError, match="image 1 is annotated with \\['dog', 'person'\\]"):
        ground_truth_objects(dataset.by_id(1), ObjectVocabulary.from_synonyms({"circle": ["disc"]}))


def test_dataset_synonym_table_end_to_end(tmp_path):
    write_coco(tmp_path, "val", images=[("1.png", 8, 8)], categories=["circle", "square"],
               annotations=[(1, "circle", (0, 0, 2, 2), {"color": "red"})], captions=[(1, "A red disc.")],
               synonyms={"circle": ["circle", "disc"], "square": ["square", "box"]})
    dataset = CocoDataset.load(tmp_path, "val", check_files=False)
    vocab = ObjectVocabulary.from_synonyms(dataset.synonyms) if dataset.synonyms else ObjectVocabulary.coco()
    truth = {1: ground_truth_objects(dataset.by_id(1), vocab)}
    assert truth == {1: {"circle"}}
    result = chair({1: "A red disc beside two boxes."}, truth, vocab)
    # disc(circle) boxes(square*) -> CHAIR_i 1/2, CHAIR_s 1/1, recall 1/1
    assert (result.chair_i, result.chair_s, result.recall) == (0.5, 1.0, 1.0)


# ---- scores ----------------------------------------------------------------------------------

def test_chair_hand_worked(coco):
    captions = {
        1: "A man throws a frisbee to his dog while another dog watches.",
        2: "A cat sleeps on a sofa next to a laptop and a cup.",
        3: "Cars wait at a red traffic light.",
    }
    truth = {1: {"person", "dog", "frisbee"}, 2: {"cat", "couch", "remote"}, 3: {"car", "traffic light"}}
    result = chair(captions, truth, coco)
    # caption 1: man(person) frisbee dog dog           -> 4 mentions, 0 hallucinated, 12 words
    # caption 2: cat sofa(couch) laptop cup            -> 4 mentions, 2 hallucinated (laptop, cup), 13 words
    # caption 3: cars(car) traffic light               -> 2 mentions, 0 hallucinated, 7 words
    assert [[m.category for m in c.mentions] for c in result.per_caption] == [
        ["person", "frisbee", "dog", "dog"], ["cat", "couch", "laptop", "cup"], ["car", "traffic light"]]
    assert [[m.category for m in c.hallucinated] for c in result.per_caption] == [[], ["laptop", "cup"], []]
    assert (result.n_mentions, result.n_hallucinated_mentions) == (10, 2)
    assert result.chair_i == pytest.approx(2 / 10)
    assert result.chair_s == pytest.approx(1 / 3)  # only caption 2 hallucinates
    # recall: image 1 names 3 of 3, image 2 names cat+couch = 2 of 3, image 3 names 2 of 2 -> 7 / 8
    assert (result.n_ground_truth_mentioned, result.n_ground_truth) == (7, 8)
    assert result.recall == pytest.approx(7 / 8)
    assert result.mean_length == pytest.approx((12 + 13 + 7) / 3)


def test_chair_counts_repeated_hallucinations_each_time(coco):
    captions = {1: "A dog and a cat. The cat sleeps.", 2: "A bus.", 3: "A man with a kite and a bench."}
    truth = {1: {"dog"}, 2: {"bus"}, 3: {"person", "kite", "dog"}}
    result = chair(captions, truth, coco)
    # 1: dog, cat*, cat*   2: bus   3: man(person), kite, bench*   -> 7 mentions, 3 hallucinated
    assert result.chair_i == pytest.approx(3 / 7)
    assert result.chair_s == pytest.approx(2 / 3)  # captions 1 and 3
    # recall: {dog} 1/1, {bus} 1/1, {person, kite} 2/3 -> 4/5
    assert result.recall == pytest.approx(4 / 5)


def test_chair_without_mentions_or_ground_truth_is_zero(coco):
    result = chair({1: "Nothing to see here."}, {1: set()}, coco)
    assert (result.chair_s, result.chair_i, result.recall, result.mean_length) == (0.0, 0.0, 0.0, 4.0)


def test_chair_input_errors(coco):
    with pytest.raises(ValueError, match="no captions"):
        chair({}, {}, coco)
    with pytest.raises(ValueError, match=r"no ground truth for captioned image ids \[7\]"):
        chair({1: "A dog.", 7: "A cat."}, {1: {"dog"}}, coco)


def test_chair_result_is_json(coco):
    result = chair({5: "A dog and a cat."}, {5: {"dog"}}, coco)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["chair_i"] == 0.5 and data["chair_s"] == 1.0
    caption = data["per_caption"][0]
    assert caption["image_id"] == 5 and caption["ground_truth"] == ["dog"]
    assert caption["hallucinated"] == [{"text": "cat", "lemma": "cat", "category": "cat", "token_index": 4}]


def test_surface_forms_are_every_phrase_lookup_maps_to_the_class(coco):
    forms = coco.surface_forms("dining table")
    assert {"dining table", "table", "desk"} <= set(forms) and forms == sorted(forms)
    assert all(coco.lookup(f) == "dining table" for f in forms)
    assert "train track" not in coco.surface_forms("train")  # a dropped phrase names no class
    scene = ObjectVocabulary.from_synonyms({"cross": ["cross", "plus sign"], "ring": ["hoop"]})
    assert scene.surface_forms("cross") == ["cross", "plus sign"] and scene.surface_forms("ring") == ["hoop", "ring"]


def test_class_row_counts_hallucinated_mentions_per_caption_and_recall_per_class(coco):
    captions = {1: "A dog and a dog beside a cat.", 2: "A cat on a bench.", 3: "A bench.", 4: "Nothing here."}
    truth = {1: {"cat"}, 2: {"cat", "bench"}, 3: {"dog", "bench"}, 4: {"dog"}}
    per_caption = chair(captions, truth, coco).to_dict()["per_caption"]
    row = class_row(per_caption)
    # dog: 2 mentions on image 1 (absent there); named on none of images 3 and 4 that hold it
    assert row == pytest.approx({"class/dog/hallucinated": 2 / 4, "class/cat/hallucinated": 0.0,
                                 "class/bench/hallucinated": 0.0, "class/dog/recall": 0.0,
                                 "class/cat/recall": 1.0, "class/bench/recall": 1.0})
    row = class_row(json.loads(json.dumps(per_caption)))  # the cached JSON form reads the same
    assert row["class/dog/hallucinated"] == 0.5
    with pytest.raises(ValueError, match="no captions"):
        class_row([])
