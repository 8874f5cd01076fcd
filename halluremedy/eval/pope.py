"""POPE (Li et al., 2023): yes/no object-existence questions, answer parsing and metrics.

Building a question set (:func:`build_pope`):

* Eligible images have >= 3 distinct annotated categories. An image's objects are its distinct
  categories in annotation order (order of first appearance in the instances file); its first 3
  are the "yes" questions.
* ``n_images`` eligible images are drawn with ``random.Random(seed)``, before and apart from any
  negative sampling, so one seed gives the same images in all three settings.
* One negative per positive: a vocabulary class (``dataset.categories``) not annotated in the
  image and not already used as a negative for it. Settings:

  - ``random``: uniformly among the allowed classes;
  - ``popular``: the allowed class most frequent over the sampled images (number of sampled
    images annotated with it), ties in vocabulary order;
  - ``adversarial``: the allowed class that co-occurs most often with that positive (number of
    dataset images annotated with both), ties in vocabulary order; when no allowed class ever
    co-occurs with it, uniformly among the allowed classes, as ``random``.

  Random draws use ``random.Random(f"pope-negatives-{seed}")``.
* Questions come per image as (yes, no) pairs: positive 1, its negative, positive 2, ... ; the
  text is :func:`halluremedy.prompts.pope_question` (LLaVA-1.5 callers append ``POPE_SUFFIX``).
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from halluremedy.data.coco import CocoDataset
from halluremedy.prompts import pope_question

__all__ = ["POPE_SETTINGS", "POSITIVES_PER_IMAGE", "PopeQuestion", "build_pope", "false_yes_by_source", "parse_pope_answer",
           "pope_metrics"]

PopeSetting = Literal["random", "popular", "adversarial"]
PopeAnswer = Literal["yes", "no"]
POPE_SETTINGS: tuple[str, ...] = ("random", "popular", "adversarial")
POSITIVES_PER_IMAGE = 3


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question: is ``object`` in image ``image_id``? ``label`` is the true answer."""

    image_id: int
    object: str
    label: PopeAnswer
    question: str

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def _distinct_in_order(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def build_pope(dataset: CocoDataset, setting: PopeSetting, n_images: int = 500, seed: int = 0) -> list[PopeQuestion]:
    """POPE questions for ``dataset``: 6 per image (3 yes, 3 no) over ``n_images`` images.

    Uses every eligible image, with a warning, when fewer than ``n_images`` exist. Raises
    ValueError for an unknown setting, ``n_images < 1``, a dataset with no eligible image, or an
    image whose absent classes are too few for 3 distinct negatives.
    """
    if setting not in POPE_SETTINGS:
        raise ValueError(f"POPE setting must be one of {POPE_SETTINGS}, got {setting!r}")
    if n_images < 1:
        raise ValueError(f"POPE needs n_images >= 1, got {n_images}")
    name = f"dataset {dataset.root} split '{dataset.split}'"
    objects = {im.image_id: _distinct_in_order(o.category for o in im.objects) for im in dataset.images}
    eligible = [image_id for image_id, cats in objects.items() if len(cats) >= POSITIVES_PER_IMAGE]
    if not eligible:
        raise ValueError(f"POPE: no image in {name} has >= {POSITIVES_PER_IMAGE} distinct annotated categories")
    if len(eligible) < n_images:
        warnings.warn(f"POPE: {name} has only {len(eligible)} images with >= {POSITIVES_PER_IMAGE} distinct "
                      f"annotated categories; using all of them instead of {n_images}", stacklevel=2)
    chosen = random.Random(seed).sample(eligible, min(n_images, len(eligible)))

    vocabulary = list(dataset.categories)
    rng = random.Random(f"pope-negatives-{seed}")
    if setting == "popular":
        frequency = Counter(c for image_id in chosen for c in objects[image_id])
        popular_first = sorted(vocabulary, key=lambda c: -frequency[c])  # stable: ties keep vocabulary order
    elif setting == "adversarial":
        co_occurrence: dict[str, Counter[str]] = {c: Counter() for c in vocabulary}
        for cats in objects.values():
            for a in cats:
                co_occurrence[a].update(b for b in cats if b != a)

    questions = []
    for image_id in chosen:
        positives = objects[image_id][:POSITIVES_PER_IMAGE]
        excluded = set(objects[image_id])
        if len(vocabulary) - len(excluded) < POSITIVES_PER_IMAGE:
            raise ValueError(f"POPE: image {image_id} of {name} leaves only {len(vocabulary) - len(excluded)} "
                             f"absent classes; {POSITIVES_PER_IMAGE} distinct negatives are needed")
        for positive in positives:
            allowed = [c for c in vocabulary if c not in excluded]
            if setting == "popular":
                negative = next(c for c in popular_first if c not in excluded)
            elif setting == "adversarial" and any(co_occurrence[positive][c] for c in allowed):
                negative = max(allowed, key=lambda c: co_occurrence[positive][c])  # first maximum: vocabulary order
            else:
                negative = rng.choice(allowed)
            excluded.add(negative)
            questions.append(PopeQuestion(image_id, positive, "yes", pope_question(positive)))
            questions.append(PopeQuestion(image_id, negative, "no", pope_question(negative)))
    return questions


def parse_pope_answer(text: str) -> PopeAnswer:
    """POPE's answer parser: "no" if the first sentence has a negation word, else "yes".

    As in POPE's evaluation code: keep the text before the first '.', drop commas, split on
    spaces; any word equal to "No", "not" or "no", or ending in "n't", makes it "no". One
    addition: surrounding whitespace is stripped first (LLaVA strips its outputs too), so
    "No\\n" reads as "no".
    """
    first_sentence = text.strip().split(".")[0].replace(",", "")
    words = first_sentence.split(" ")
    return "no" if any(w in ("No", "not", "no") or w.endswith("n't") for w in words) else "yes"


def pope_metrics(predictions: Sequence[PopeAnswer], labels: Sequence[PopeAnswer]) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1 and yes-ratio with "yes" as the positive class.

    Returns those five (fractions in [0, 1]) and the counts ``n, tp, fp, tn, fn``. Where a
    denominator is zero the rate is 0.0: precision with no "yes" prediction, recall with no "yes"
    label, F1 when precision + recall is 0. Raises ValueError for mismatched lengths, empty input,
    or an answer other than "yes"/"no".
    """
    if len(predictions) != len(labels):
        raise ValueError(f"pope_metrics: {len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("pope_metrics: no answers to score")
    for kind, answers in (("prediction", predictions), ("label", labels)):
        bad = next((a for a in answers if a not in ("yes", "no")), None)
        if bad is not None:
            raise ValueError(f"pope_metrics: {kind} {bad!r} is not 'yes' or 'no'")
    pairs = Counter(zip(predictions, labels, strict=True))
    tp, fp, tn, fn = pairs["yes", "yes"], pairs["yes", "no"], pairs["no", "no"], pairs["no", "yes"]
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / n,
        "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def false_yes_by_source(questions: Sequence[PopeQuestion], predictions: Sequence[PopeAnswer],
                        present: Mapping[int, Iterable[str]], partners: Mapping[str, Iterable[str]]) -> dict:
    """Which prior a setting's false "yes" answers come from: its "no" questions split into those about
    an absent co-occurrence partner of a class present in the image (``partners``, e.g.
    :func:`~halluremedy.eval.sources.cooccurrence_partners`) and the rest.

    ``present``: image id -> its annotated classes. Returns ``{"partner": {"n", "yes", "yes_rate"},
    "other": {...}}``, ``n`` the "no" questions of that kind, ``yes`` those answered "yes" (rate 0.0
    when ``n`` is 0). Raises ValueError for mismatched lengths.
    """
    if len(predictions) != len(questions):
        raise ValueError(f"false_yes_by_source: {len(predictions)} predictions but {len(questions)} questions")
    counts = {kind: Counter() for kind in ("partner", "other")}
    for q, answer in zip(questions, predictions, strict=True):
        if q.label != "no":
            continue
        is_partner = any(q.object in partners.get(c, ()) for c in present[q.image_id])
        tally = counts["partner" if is_partner else "other"]
        tally["n"] += 1
        tally["yes"] += answer == "yes"
    return {kind: {"n": c["n"], "yes": c["yes"], "yes_rate": c["yes"] / c["n"] if c["n"] else 0.0}
            for kind, c in counts.items()}
