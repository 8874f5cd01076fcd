"""Where a model's caption hallucinations come from: its language prior, or misperception.

LLaVA-1.5 sees well (CHAIR_i 0.127) and hallucinates from its language prior: objects that co-occur
with what is there, and details a long caption adds once everything present is named. A model with a
weak encoder instead names a present object as another class. Preference tuning removes a prior; it
cannot teach an encoder to see. So before reading a remedy's numbers, ask which kind a base has.

Every hallucinated caption mention (a CHAIR mention of a class not in the image's ground truth) gets
one source, the first that applies:

* ``partner``: it names an absent co-occurrence partner of a class that is in the image *and is
  named in the same caption* (the fork said beside the knife; the crescent beside the star). A
  partner of a present class the caption never names is not counted here: it may be that object
  misnamed (a triangle called "square" where square and triangle co-occur);
* ``after_all``: every ground-truth class had already been named earlier in the caption, so the
  mention cannot stand for a present object: an invented extra (a plausible last sentence);
* ``other``: neither; most often a present object named as another class (misperception), with
  the present object it stands for still unnamed.

``prior_share = (partner + after_all) / hallucinated mentions``. A partner mention in a caption that
leaves some present class unnamed could still be that object misnamed; ``prior_share_strict``
counts only partner mentions of captions that name every present class (``partner_all_named``). Partners come from the data's own
annotations (:func:`cooccurrence_partners`: classes that appear together at least ``min_lift`` times
as often as chance), so any COCO-format split can be profiled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["SOURCES", "cooccurrence_partners", "hallucination_sources", "source_row"]

SOURCES = ("partner", "after_all", "other")


def cooccurrence_partners(class_sets: Iterable[Iterable[str]], *, min_lift: float = 2.0, min_count: int = 5
                          ) -> dict[str, tuple[str, ...]]:
    """Class A -> classes B (sorted) with ``P(B | A) >= min_lift * P(B)`` over the images, counted
    from each image's set of present classes; pairs seen together fewer than ``min_count`` times are
    left out (too few to tell). The relation need not be symmetric, though with lift it mostly is."""
    sets = [frozenset(s) for s in class_sets]
    n = len(sets)
    if n == 0:
        return {}
    single: Counter[str] = Counter(c for s in sets for c in s)
    joint: Counter[tuple[str, str]] = Counter((a, b) for s in sets for a in s for b in s if a != b)
    out: dict[str, list[str]] = {}
    for (a, b), k in joint.items():
        if k >= min_count and k / single[a] >= min_lift * single[b] / n:
            out.setdefault(a, []).append(b)
    return {a: tuple(sorted(bs)) for a, bs in sorted(out.items())}


def _get(obj, name: str):
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def hallucination_sources(per_caption: Sequence, partners: Mapping[str, Iterable[str]]) -> dict:
    """Count the source of every hallucinated mention (module docstring).

    ``per_caption``: :class:`~halluremedy.eval.chair.CaptionChair` rows or their JSON form
    (``ChairResult.to_dict()["per_caption"]``: ``mentions`` with ``category`` in caption order,
    ``ground_truth``). Returns ``{"hallucinated": n, "partner": n, "after_all": n, "other": n,
    "partner_all_named": n, "prior_share_strict": fraction,
    "share": {source: fraction}, "prior_share": fraction, "prior_captions": fraction of hallucinating
    captions whose every hallucination is a prior one}`` (fractions 0.0 when nothing is hallucinated).
    """
    partner_of = {a: frozenset(bs) for a, bs in partners.items()}
    counts: Counter[str] = Counter()
    hallucinating = prior_only = 0
    for row in per_caption:
        truth = set(_get(row, "ground_truth"))
        said = {_get(m, "category") for m in _get(row, "mentions")}
        cued = set().union(*(partner_of.get(g, frozenset()) for g in truth & said)) - truth
        named: set[str] = set()
        kinds = []
        all_named = truth <= said
        for m in _get(row, "mentions"):
            category = _get(m, "category")
            if category in truth:
                named.add(category)
                continue
            kinds.append("partner" if category in cued else "after_all" if truth and named >= truth else "other")
        counts.update(kinds)
        counts["partner_all_named"] += all_named * kinds.count("partner")
        if kinds:
            hallucinating += 1
            prior_only += "other" not in kinds
    total = sum(counts[s] for s in SOURCES)
    share = {s: counts[s] / total if total else 0.0 for s in SOURCES}
    return {"hallucinated": total, **{s: counts[s] for s in SOURCES}, "share": share,
            "partner_all_named": counts["partner_all_named"], "prior_share": share["partner"] + share["after_all"],
            "prior_share_strict": (counts["partner_all_named"] + counts["after_all"]) / total if total else 0.0,
            "prior_captions": prior_only / hallucinating if hallucinating else 0.0}


def source_row(sources: Mapping, tag: str) -> dict[str, float]:
    """Flat metric row of :func:`hallucination_sources`'s result: ``prior/{tag}`` and
    ``src-{source}/{tag}`` shares."""
    return {f"prior/{tag}": float(sources["prior_share"]), f"prior-strict/{tag}": float(sources["prior_share_strict"]),
            **{f"src-{s}/{tag}": float(sources["share"][s]) for s in SOURCES}}
