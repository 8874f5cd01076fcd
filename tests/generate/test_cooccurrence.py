"""Co-occurrence counts and partner sampling on a tiny hand-built COCO-format dataset."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import categories_image

from halluremedy.data.coco import CocoDataset, write_coco
from halluremedy.generate.cooccurrence import CooccurrenceStats

CATEGORIES = ["knife", "fork", "dining table", "cup"]


@pytest.fixture
def stats(tmp_path) -> CooccurrenceStats:
    # image 1: knife, fork, table (two knives: still one image); 2: knife, table; 3: fork, table; 4: cup
    objects = {1: ["knife", "knife", "fork", "dining table"], 2: ["knife", "dining table"],
               3: ["fork", "dining table"], 4: ["cup"]}
    annotations = [(image_id, c, (0, 0, 4, 4), {}) for image_id, cats in objects.items() for c in cats]
    write_coco(tmp_path, "train", [(f"{k}.png", 8, 8) for k in objects], CATEGORIES, annotations, [])
    return CooccurrenceStats.from_dataset(CocoDataset.load(tmp_path, "train", check_files=False))


def test_counts_are_per_image_and_symmetric(stats):
    assert stats.n_images == 4
    assert stats.image_counts == {"knife": 2, "fork": 2, "dining table": 3, "cup": 1}
    assert stats.count("knife", "dining table") == stats.count("dining table", "knife") == 2
    assert stats.count("knife", "fork") == 1
    assert stats.count("cup", "knife") == 0
    assert stats.count("knife", "knife") == 0


def test_conditional_probabilities(stats):
    assert stats.conditional("dining table", given="knife") == 1.0
    assert stats.conditional("fork", given="knife") == 0.5
    assert stats.conditional("knife", given="dining table") == pytest.approx(2 / 3)
    assert stats.conditional("knife", given="cup") == 0.0


def test_partners_most_likely_first_and_restricted(stats):
    assert stats.partners("knife") == [("dining table", 1.0), ("fork", 0.5)]
    assert stats.partners("knife", among={"fork", "cup"}) == [("fork", 0.5)]
    assert stats.partners("cup") == []


def test_sample_partner_is_proportional_and_seeded(stats):
    rng = np.random.default_rng(0)
    draws = [stats.sample_partner("knife", {"fork", "dining table", "cup"}, rng) for _ in range(3000)]
    assert set(draws) == {"fork", "dining table"}  # cup never co-occurs with knife
    assert draws.count("dining table") / len(draws) == pytest.approx(2 / 3, abs=0.03)  # 1.0 : 0.5
    again = [stats.sample_partner("knife", {"fork", "dining table", "cup"}, np.random.default_rng(0))
             for _ in range(3)]
    assert again == draws[:1] * 3


def test_sample_partner_none_without_cooccurring_candidate(stats):
    assert stats.sample_partner("cup", {"knife", "fork"}, np.random.default_rng(0)) is None
    assert stats.sample_partner("knife", set(), np.random.default_rng(0)) is None


def test_unknown_category_raises():
    with pytest.raises(ValueError, match="image 7 is annotated with \\['spoon'\\]"):
        CooccurrenceStats.from_images([categories_image("spoon", image_id=7)], CATEGORIES)
