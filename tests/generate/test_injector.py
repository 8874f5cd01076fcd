"""RuleBasedEditor: each edit kind on hand-written scene and COCO-style captions, falsity against
the annotations, determinism per seed, None when a kind is impossible."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import categories_image, image, obj

from halluremedy.data.scenes import CLASSES, SYNONYMS, make_dataset, scene_text_vocabulary
from halluremedy.eval.chair import ObjectVocabulary, chair, ground_truth_objects
from halluremedy.eval.text import tokenize
from halluremedy.generate.cooccurrence import CooccurrenceStats
from halluremedy.generate.injector import COCO_SURFACE_WORDS, EDIT_KINDS, AttributeWords, EditLexicon, RuleBasedEditor

SCENE_VOCAB = ObjectVocabulary.from_synonyms(SYNONYMS)
RED_BLUE = AttributeWords("color", {"red": "red", "blue": "blue"})
SIZES = AttributeWords("size", {"small": "small", "large": "large"})
SCENE_LEXICON = EditLexicon(attributes=(RED_BLUE, SIZES))
SCENE_WORDS = {c: (c,) for c in CLASSES} | {"ring": ("hoop",)}  # one word per class; rings are "hoops"


def scene_editor(*cooccurring: tuple[str, ...], modes=("add", "replace"), lexicon=SCENE_LEXICON) -> RuleBasedEditor:
    """An editor whose co-occurrence counts come from images holding the given class sets."""
    stats = CooccurrenceStats.from_images([categories_image(*cats, image_id=k) for k, cats in enumerate(cooccurring)],
                                          CLASSES)
    return RuleBasedEditor(SCENE_VOCAB, stats, surface_words=SCENE_WORDS, lexicon=lexicon, cooccur_modes=modes)


def outcomes(editor: RuleBasedEditor, im, caption: str, kind: str, seeds: int = 40) -> set[str | None]:
    return {editor.edit(im, caption, kind, np.random.default_rng(seed)) for seed in range(seeds)}


# A red diamond above a blue circle (image y grows downwards); a small red star left of the circle.
DIAMOND = obj("diamond", (2, 2, 10, 10), color="red", size="large")
CIRCLE = obj("circle", (2, 20, 10, 10), color="blue", size="large")
STAR = obj("star", (20, 22, 6, 6), color="red", size="small")
TWO_OBJECTS = image(DIAMOND, CIRCLE)
THREE_OBJECTS = image(DIAMOND, CIRCLE, STAR)
DETAILED = "there is a large red diamond above a large blue circle."
DETAILED_3 = "there is a large red diamond above a large blue circle. a small red star is below the red diamond."
SHORT = "a red diamond and a small blue circle."


# --- relation ----------------------------------------------------------------------------------

def test_relation_flips_the_phrase():
    assert outcomes(scene_editor(), TWO_OBJECTS, DETAILED, "relation") == {
        "there is a large red diamond below a large blue circle."}


def test_relation_picks_any_phrase_and_handles_back_references():
    assert outcomes(scene_editor(), THREE_OBJECTS, DETAILED_3, "relation") == {
        "there is a large red diamond below a large blue circle. a small red star is below the red diamond.",
        "there is a large red diamond above a large blue circle. a small red star is above the red diamond."}


def test_relation_none_without_a_relation_phrase():
    assert outcomes(scene_editor(), TWO_OBJECTS, SHORT, "relation") == {None}


def test_relation_none_when_the_flip_is_true_for_another_object():
    # a second blue circle above the diamond makes "diamond below a blue circle" true
    im = image(obj("diamond", (2, 12, 8, 8), color="red", size="large"), CIRCLE,
               obj("circle", (20, 0, 8, 8), color="blue", size="large"))
    assert outcomes(scene_editor(), im, DETAILED, "relation") == {None}


def test_relation_coco_style():
    editor = RuleBasedEditor(ObjectVocabulary.coco(), CooccurrenceStats.from_images([], ["cat", "car"]),
                             surface_words={})
    caption = "A cat sitting on top of a car."
    on_top = image(obj("cat", (10, 0, 10, 10)), obj("car", (0, 12, 40, 20)))
    below = image(obj("cat", (10, 40, 10, 10)), obj("car", (0, 12, 40, 20)))
    assert outcomes(editor, on_top, caption, "relation", 5) == {"A cat sitting underneath a car."}
    assert outcomes(editor, below, caption, "relation", 5) == {None}
    assert outcomes(editor, on_top, "To the left of a car there is a cat.", "relation", 5) == {
        "To the right of a car there is a cat."}  # no subject before the phrase: the caption is trusted


# --- attribute ---------------------------------------------------------------------------------

def test_attribute_changes_a_word_to_a_wrong_value():
    assert outcomes(scene_editor(), image(DIAMOND), "a red diamond.", "attribute") == {"a blue diamond."}


def test_attribute_every_choice_and_back_references_follow():
    assert outcomes(scene_editor(), THREE_OBJECTS, DETAILED_3, "attribute", 60) == {
        "there is a small red diamond above a large blue circle. a small red star is below the red diamond.",
        "there is a large blue diamond above a large blue circle. a small red star is below the blue diamond.",
        "there is a large red diamond above a small blue circle. a small red star is below the red diamond.",
        "there is a large red diamond above a large red circle. a small red star is below the red diamond.",
        "there is a large red diamond above a large blue circle. a large red star is below the red diamond.",
        "there is a large red diamond above a large blue circle. a small blue star is below the red diamond."}


def test_attribute_only_values_wrong_for_every_object_of_the_class():
    im = image(obj("diamond", color="red", size="large"), obj("diamond", (10, 10, 4, 4), color="blue", size="large"))
    caption = "a red diamond and a blue diamond."
    assert outcomes(scene_editor(), im, caption, "attribute") == {None}
    green = EditLexicon(attributes=(AttributeWords("color", {"red": "red", "blue": "blue", "green": "green"}), SIZES))
    assert outcomes(scene_editor(lexicon=green), im, caption, "attribute") == {
        "a green diamond and a blue diamond.", "a red diamond and a green diamond."}


def test_attribute_none_without_attribute_words():
    assert outcomes(scene_editor(), image(obj("diamond", color="red")), "there is a diamond.", "attribute") == {None}


# --- co-occurring objects ----------------------------------------------------------------------

def test_cooccur_adds_a_list_item_in_a_short_caption():
    # rings co-occur with diamonds; circles only with diamonds (present), so the anchor is the diamond
    editor = scene_editor(("diamond", "ring"), ("diamond", "circle"), modes=("add",))
    im = image(DIAMOND, obj("circle", (2, 20, 6, 6), color="blue", size="small"))
    assert outcomes(editor, im, SHORT, "cooccur") == {
        "a red diamond, a red hoop and a small blue circle.", "a red diamond, a blue hoop and a small blue circle.",
        "a red diamond, a small blue circle and a red hoop.", "a red diamond, a small blue circle and a blue hoop."}


def test_cooccur_adds_a_relation_sentence_in_a_detailed_caption():
    editor = scene_editor(("diamond", "ring"), ("diamond", "circle"), modes=("add",))
    assert outcomes(editor, TWO_OBJECTS, DETAILED, "cooccur") == {
        f"{DETAILED} a large {colour} hoop is {relation} the red diamond."
        for colour in ("red", "blue") for relation in ("above", "below")}


def test_cooccur_replaces_an_object_and_its_back_references():
    editor = scene_editor(("diamond", "ring"), ("diamond", "circle", "star"), modes=("replace",))
    assert outcomes(editor, THREE_OBJECTS, DETAILED_3, "cooccur") == {
        "there is a large red hoop above a large blue circle. a small red star is below the red hoop."}


def test_cooccur_added_object_is_a_chair_hallucination():
    editor = scene_editor(("diamond", "ring"), ("diamond", "circle"))
    for seed in range(20):
        edited = editor.edit(TWO_OBJECTS, DETAILED, "cooccur", np.random.default_rng(seed))
        truth = ground_truth_objects(TWO_OBJECTS, SCENE_VOCAB)
        result = chair({1: edited}, {1: truth}, SCENE_VOCAB)
        assert [m.category for m in result.per_caption[0].hallucinated] == ["ring"], edited


def test_cooccur_none_when_no_absent_object_cooccurs():
    editor = scene_editor(("diamond", "circle"), ("star", "crescent"))  # nothing absent goes with these two
    assert outcomes(editor, TWO_OBJECTS, DETAILED, "cooccur") == {None}


# --- COCO-style free text ----------------------------------------------------------------------

RIDER = image(obj("person", (10, 10, 20, 40)), obj("bicycle", (10, 30, 30, 20)), obj("car", (60, 40, 30, 20)))
RIDER_CAPTION = "A man riding a red bike next to a car."


def coco_editor(*cooccurring: tuple[str, ...], modes=("add", "replace"), colours=("red", "blue")) -> RuleBasedEditor:
    from halluremedy.eval.coco_synonyms import COCO_CLASSES

    stats = CooccurrenceStats.from_images([categories_image(*cats, image_id=k) for k, cats in enumerate(cooccurring)],
                                          COCO_CLASSES)
    lexicon = EditLexicon(attributes=(AttributeWords("color", {c: c for c in colours}), SIZES))
    return RuleBasedEditor(ObjectVocabulary.coco(), stats, surface_words=COCO_SURFACE_WORDS, lexicon=lexicon,
                           cooccur_modes=modes)


def test_coco_attribute():
    assert outcomes(coco_editor(), RIDER, RIDER_CAPTION, "attribute") == {"A man riding a blue bike next to a car."}
    assert outcomes(coco_editor(), RIDER, "Red bikes next to a car.", "attribute") == {"Blue bikes next to a car."}


def test_coco_attribute_never_introduces_an_object_word():
    # "orange" is also a COCO class: "an orange bike" would add an orange mention
    assert outcomes(coco_editor(colours=("red", "orange")), RIDER, RIDER_CAPTION, "attribute") == {None}


def test_coco_cooccur_add_and_replace():
    cooccurring = [("car", "bus"), ("person", "bicycle", "car")]  # only a bus is absent and co-occurs (with the car)
    assert outcomes(coco_editor(*cooccurring, modes=("add",)), RIDER, RIDER_CAPTION, "cooccur") == {
        "A man riding a red bike next to a car and a bus."}
    assert outcomes(coco_editor(*cooccurring, modes=("replace",)), RIDER, RIDER_CAPTION, "cooccur") == {
        "A man riding a red bike next to a bus."}


def test_coco_replace_fixes_the_article_and_the_plural():
    table = image(obj("knife"), obj("dining table"))
    editor = coco_editor(("knife", "oven"), ("knife", "dining table"), modes=("replace",))
    assert outcomes(editor, table, "A plate with a knife.", "cooccur") == {"A plate with an oven."}
    assert outcomes(editor, table, "Two knives on a table.", "cooccur") == {"Two ovens on a table."}


def test_coco_no_relation_phrase():
    assert outcomes(coco_editor(), RIDER, RIDER_CAPTION, "relation") == {None}


# --- properties on generated scene data ----------------------------------------------------------

@pytest.fixture(scope="module")
def scene_split(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("scenes"), "train", 30, seed=0, progress=False)


def _claims(caption: str) -> list[tuple[str, str, str | None]]:
    """(class, colour, size) each object phrase of a scene caption states; short captions name only
    small sizes (unnamed = large); a detailed caption's "the <colour> <noun>" states no size."""
    tokens = tokenize(caption)
    detailed = tokens[:2] == ["there", "is"]
    claims = []
    for m in SCENE_VOCAB.extract_mentions(caption):
        before = tokens[max(0, m.token_index - 3):m.token_index]
        colour = before[-1]
        size = before[-2] if before[-2] in ("small", "large") else (None if detailed else "large")
        claims.append((m.category, colour, size))
    return claims


def _true(claim, im) -> bool:
    category, colour, size = claim
    return any(o.category == category and o.attributes["color"] == colour and size in (None, o.attributes["size"])
               for o in im.objects)


def test_scene_edits_are_false_and_stay_in_the_scene_vocabulary(scene_split):
    editor = RuleBasedEditor.for_dataset(scene_split)
    words = set(scene_text_vocabulary())
    flips = {("above", "below"), ("below", "above"), ("left", "right"), ("right", "left")}
    made = {kind: 0 for kind in EDIT_KINDS}
    for i, im in enumerate(scene_split.images):
        truth = ground_truth_objects(im, editor.vocabulary)
        for caption in im.captions:
            assert all(_true(c, im) for c in _claims(caption)), caption
            for kind in EDIT_KINDS:
                edited = editor.edit(im, caption, kind, np.random.default_rng([i, 7]))
                if edited is None:
                    continue
                made[kind] += 1
                assert edited != caption and set(tokenize(edited)) <= words, edited
                if kind == "cooccur":
                    hallucinated = chair({1: edited}, {1: truth}, editor.vocabulary).per_caption[0].hallucinated
                    assert hallucinated and all(m.category not in im.categories for m in hallucinated), edited
                elif kind == "attribute":
                    assert not all(_true(c, im) for c in _claims(edited)), edited
                else:
                    changed = [(a, b) for a, b in zip(tokenize(caption), tokenize(edited), strict=True) if a != b]
                    assert len(changed) == 1 and changed[0] in flips, edited
    assert all(made.values()), made


def test_edits_are_deterministic_per_seed(scene_split):
    editor = RuleBasedEditor.for_dataset(scene_split)

    def run(seed: int) -> list[str | None]:
        return [editor.edit(im, caption, kind, np.random.default_rng([seed, i]))
                for i, im in enumerate(scene_split.images) for caption in im.captions for kind in EDIT_KINDS]

    first = run(0)
    assert run(0) == first
    assert run(1) != first


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="'hoop' of 'circle' parses as 'ring'"):
        RuleBasedEditor(SCENE_VOCAB, CooccurrenceStats.from_images([], CLASSES), surface_words={"circle": ("hoop",)})
    with pytest.raises(ValueError, match="unknown cooccur modes"):
        scene_editor(modes=("swap",))
    with pytest.raises(ValueError, match="unknown edit kind"):
        scene_editor().edit(TWO_OBJECTS, DETAILED, "count", np.random.default_rng(0))
