"""The COCO table: 80 classes, each with its own name, and a vocabulary that builds without conflicts."""

from halluremedy.eval.chair import ObjectVocabulary
from halluremedy.eval.coco_synonyms import (
    COCO_ANIMAL_CLASSES,
    COCO_CLASSES,
    COCO_NON_OBJECT_PHRASES,
    COCO_PASSENGER_VEHICLE_CLASSES,
    COCO_SYNONYMS,
    coco_phrase_table,
)


def test_eighty_classes_each_with_its_name_first():
    assert len(COCO_CLASSES) == 80 == len(set(COCO_CLASSES))
    assert list(COCO_SYNONYMS) == list(COCO_CLASSES)
    assert all(words[0] == category for category, words in COCO_SYNONYMS.items())


def test_rule_classes_are_coco_classes():
    assert set(COCO_ANIMAL_CLASSES) <= set(COCO_CLASSES)
    assert set(COCO_PASSENGER_VEHICLE_CLASSES) <= set(COCO_CLASSES)


def test_phrase_table_contents():
    table = coco_phrase_table()
    assert table["baby elephant"] == "elephant" and table["adult puppy"] == "dog"
    assert table["passenger jet"] == "airplane" and table["passenger locomotive"] == "train"
    assert table["baby animal"] is None and table["adult cub"] is None
    assert all(table[phrase] is None for phrase in COCO_NON_OBJECT_PHRASES)


def test_every_surface_form_reads_as_its_class():
    vocab = ObjectVocabulary.coco()
    for phrase, category in coco_phrase_table().items():
        assert vocab.lookup(phrase) == category, phrase
    assert vocab.classes == COCO_CLASSES
