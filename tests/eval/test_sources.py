"""hallucination_sources / cooccurrence_partners on hand-made captions."""

import pytest

from halluremedy.data.scenes.world import SYNONYMS
from halluremedy.eval.chair import ObjectVocabulary, chair
from halluremedy.eval.sources import cooccurrence_partners, hallucination_sources, source_row

VOCAB = ObjectVocabulary.from_synonyms(SYNONYMS)
PARTNERS = {"star": ("crescent",), "arrow": ("circle",)}


def sources(captions: dict[int, str], truth: dict[int, set[str]]) -> dict:
    return hallucination_sources(chair(captions, truth, VOCAB).per_caption, PARTNERS)


def test_each_source_once():
    got = sources({
        1: "there is a large red star and a small blue moon.",  # absent partner of the star
        2: "there is a large red circle and a green square. there is also a small red bar.",  # after all named
        3: "there is a large red triangle.",  # the square named as a triangle, square never named
        4: "there is a large red disc.",  # clean
    }, {1: {"star"}, 2: {"circle", "square"}, 3: {"square"}, 4: {"circle"}})
    assert (got["hallucinated"], got["partner"], got["after_all"], got["other"]) == (3, 1, 1, 1)
    assert got["prior_share"] == pytest.approx(2 / 3)
    assert got["prior_captions"] == pytest.approx(2 / 3)
    assert got["partner_all_named"] == 1 and got["prior_share_strict"] == pytest.approx(2 / 3)
    row = source_row(got, "greedy")
    assert row["prior/greedy"] == pytest.approx(2 / 3) and row["src-other/greedy"] == pytest.approx(1 / 3)


def test_order_matters_and_partner_wins():
    # the bar comes before the square is named: it may stand for the square -> other
    got = sources({1: "a red circle, a blue bar and a green square."}, {1: {"circle", "square"}})
    assert got["other"] == 1 and got["after_all"] == 0
    # a partner mention after everything is named counts as partner (the first rule that applies)
    got = sources({1: "a red star and a white crescent."}, {1: {"star"}})
    assert (got["partner"], got["after_all"]) == (1, 0)
    # the star named, the square not: the moon may be the square misnamed -> partner, but not a strict one
    got = sources({1: "a red star and a white moon."}, {1: {"star", "square"}})
    assert (got["partner"], got["partner_all_named"], got["prior_share"], got["prior_share_strict"]) == (1, 0, 1.0, 0.0)
    # a crescent is not cued when no star is present, and repeated mentions count each time
    got = sources({1: "a moon, a moon."}, {1: {"square"}})
    assert got["other"] == 2 and got["prior_share"] == 0.0
    # a partner of a present class the caption never names may be that object misnamed -> other
    got = sources({1: "a red moon and a blue square."}, {1: {"star", "square"}})
    assert (got["partner"], got["after_all"], got["other"]) == (0, 0, 1)


def test_nothing_hallucinated_and_json_rows():
    result = chair({1: "a red circle."}, {1: {"circle"}}, VOCAB).to_dict()
    got = hallucination_sources(result["per_caption"], PARTNERS)
    assert got["hallucinated"] == 0 and got["prior_share"] == 0.0 and got["prior_captions"] == 0.0


def test_cooccurrence_partners_from_class_sets():
    sets = [{"star", "crescent"}] * 10 + [{"square"}] * 10 + [{"circle", "square"}] * 5 + [{"circle"}] * 5 + \
        [{"star"}] * 2
    got = cooccurrence_partners(sets)
    assert got["star"] == ("crescent",) and got["crescent"] == ("star",)
    assert "circle" not in got  # P(square | circle) = 0.5 < 2 * P(square)
    assert cooccurrence_partners(sets, min_count=11) == {}
    assert cooccurrence_partners([]) == {}
