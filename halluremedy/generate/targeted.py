"""Targeted data (DFTG step 2): instructions and preference pairs aimed at a diagnosed model's weak spots.

A :class:`TargetWeights` says where to aim: a weight per class (from the diagnosis' per-class
hallucination rates), per trigger pair ``present A -> hallucinated B`` (from the trigger excess)
and per confused attribute value. :meth:`TargetWeights.uniform` is the untargeted control: the
same generator with every class and pair equally likely, so targeted and untargeted data differ
in *what* they ask about, never in how many records, which kinds, or which seed.

* :func:`sample_questions` draws grounded questions from a COCO-format split's annotations:

  - ``existence_absent``: "Is there a {B} in the image?" -> "No"; with probability
    ``trigger_share`` on an image holding a sampled trigger A of B (the adversarial case),
    otherwise on any image without a sampled class B;
  - ``existence_present``: "Is there a {c} in the image?" -> "Yes" (keeps the weak classes from
    collapsing to "No");
  - ``attribute``: "Is there a {value} {c} in the image?" with a true or (confusion-weighted)
    false colour/size value;
  - ``relation``: "Is the {colour} {c} to the left of the {colour} {d}?" true or flipped;
  - ``caption``: a faithful reference caption of an image chosen the way negatives are.

  Yes/no questions carry ``POPE_SUFFIX`` (the answer format POPE evaluates).
* :func:`instruction_conversations` turns them into SFT conversations (LLaVA JSON via
  :func:`write_instructions`; ``train_sft`` consumes them);
* :func:`targeted_preference_pairs` makes POVID-style caption pairs whose rejected caption states
  one of the model's own hallucinations: ``edit="rename"`` names a present object A as the absent
  class B the model calls it (drawn from its misnaming table, on an image holding A and not B);
  ``edit="add"`` adds an absent object drawn from its trigger -> hallucination table
  (``RuleBasedEditor`` with diagnosis-weighted tables); ``write_preferences`` writes them for the
  DPO recipe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from halluremedy.data.coco import CocoDataset, CocoImage, CocoObject
from halluremedy.data.conversation import Conversation, Turn, write_jsonl_atomic
from halluremedy.data.preference import PreferenceRecord
from halluremedy.data.scenes.world import SceneObject, relation_between
from halluremedy.diagnose.probes import Diagnosis
from halluremedy.eval.chair import ObjectVocabulary
from halluremedy.eval.run import object_vocabulary
from halluremedy.generate.cooccurrence import CooccurrenceStats
from halluremedy.generate.injector import (
    COCO_SURFACE_WORDS,
    EditLexicon,
    RuleBasedEditor,
)
from halluremedy.generate.pairs import caption_prompt_by_index
from halluremedy.prompts import POPE_SUFFIX, pope_question

__all__ = ["CLASS_SCORES", "PAIR_EDITS", "QUESTION_KINDS", "RELATION_PHRASES", "GroundedQuestion", "InstructionMix", "PairEdit",
           "QuestionKind", "TargetWeights", "instruction_conversations", "reference_phrase", "sample_questions",
           "targeted_preference_pairs", "write_instructions"]

QuestionKind = Literal["existence_absent", "existence_present", "attribute", "relation", "caption"]
QUESTION_KINDS: tuple[QuestionKind, ...] = ("existence_absent", "existence_present", "attribute", "relation",
                                            "caption")
RELATION_PHRASES: dict[str, str] = {"left of": "to the left of", "right of": "to the right of", "above": "above",
                                    "below": "below"}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_ATTRIBUTES = ("color", "size")
CLASS_SCORES = ("hallucination", "error")  # what a targeted class weight reads from the diagnosis


def _normalised(weights: dict, what: str) -> dict:
    total = float(sum(weights.values()))
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError(f"TargetWeights.{what}: weights must be >= 0 with a positive sum")
    return {k: float(w) / total for k, w in weights.items() if w > 0}


@dataclass(frozen=True)
class TargetWeights:
    """Where generated data aims. Weights are normalised to sum to 1 (zero-weight keys dropped).

    ``classes[c]``: how often class c is asked about; ``triggers[(a, b)]``: how often a negative
    about b is asked on an image holding a; ``misnamings[(a, b)]``: how often a rename pair names a
    present a as the absent b; ``values[(attribute, category, value)]``: extra weight of a false
    attribute value (added to a uniform base over the false values).
    """

    name: str
    classes: dict[str, float]
    triggers: dict[tuple[str, str], float]
    values: dict[tuple[str, str, str], float] = field(default_factory=dict)
    misnamings: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", _normalised(self.classes, "classes"))
        for name in ("triggers", "misnamings"):
            table = getattr(self, name)
            object.__setattr__(self, name, _normalised(table, name) if table else {})

    @classmethod
    def uniform(cls, categories: Sequence[str]) -> TargetWeights:
        """The untargeted control: every class and every ordered pair equally likely."""
        pairs = {(a, b): 1.0 for a in categories for b in categories if a != b}
        return cls("uniform", {c: 1.0 for c in categories}, pairs, misnamings=pairs)

    @classmethod
    def from_diagnosis(cls, diagnosis: Diagnosis, *, floor: float = 0.02, top_triggers: int | None = 12,
                       top_misnamings: int | None = 12, focus: float = 1.0,
                       class_score: Literal["hallucination", "error"] = "hallucination") -> TargetWeights:
        """Class weight ``(score + floor) ** focus`` (``focus`` > 1 aims harder at the worst classes), where
        ``class_score`` picks the class's ``hallucination_rate`` (named while absent) or its ``error_rate``
        (also missed while present: the class a model cannot see, and calls something else, gets weight
        too); trigger weight = its positive excess (the
        ``top_triggers`` largest; pairs named by no trigger get none); misnaming weight = its count
        (the ``top_misnamings`` largest); attribute value weight = how often the model confused it.
        A table the diagnosis leaves empty falls back to uniform pairs."""
        if focus <= 0:
            raise ValueError(f"focus must be > 0, got {focus}")
        if class_score not in CLASS_SCORES:
            raise ValueError(f"class_score must be one of {CLASS_SCORES}, got {class_score!r}")
        classes = {c: (getattr(s, f"{class_score}_rate") + floor) ** focus for c, s in diagnosis.classes.items()}
        uniform = {(a, b): 1.0 for a in classes for b in classes if a != b}
        triggers = {(t.present, t.hallucinated): t.excess for t in diagnosis.top_triggers(top_triggers)}
        misnamings = {(m.true, m.said): m.count for m in diagnosis.misnamings[:top_misnamings]}
        values: dict[tuple[str, str, str], float] = {}
        for a in diagnosis.attribute_confusions:
            key = (a.attribute, a.category, a.said)
            values[key] = values.get(key, 0.0) + a.count
        return cls("targeted", classes, triggers or uniform, values, misnamings or uniform)

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": self.classes,
                "triggers": [{"present": a, "hallucinated": b, "weight": w} for (a, b), w in self.triggers.items()],
                "misnamings": [{"true": a, "said": b, "weight": w} for (a, b), w in self.misnamings.items()],
                "values": [{"attribute": a, "category": c, "value": v, "weight": w}
                           for (a, c, v), w in self.values.items()]}

    def scene_class_weights(self, categories: Sequence[str]) -> tuple[float, ...]:
        """A weight per class for rendering fresh scenes aimed at these targets: how often the class
        is asked about, plus how often it is the present side of a trigger or misnaming pair (the
        images its negatives and renames need). Uniform weights give uniform classes."""
        present = {c: 0.0 for c in categories}
        for table in (self.triggers, self.misnamings):
            for (a, _), w in table.items():
                present[a] = present.get(a, 0.0) + w
        return tuple(self.classes.get(c, 0.0) + present[c] for c in categories)

    def cooccurrence(self, categories: Sequence[str], floor: float = 0.05, *,
                     table: Literal["triggers", "misnamings"] = "triggers") -> CooccurrenceStats:
        """Co-occurrence "counts" a ``RuleBasedEditor`` draws its new objects from: for a present
        class a, absent class b with weight ``table[(a, b)] + floor * classes[b]``."""
        cats, pairs_of = tuple(categories), getattr(self, table)
        pairs = {a: {b: pairs_of.get((a, b), 0.0) + floor * self.classes.get(b, 0.0) for b in cats if b != a}
                 for a in cats}
        return CooccurrenceStats(cats, 1, {c: 1 for c in cats}, pairs)


@dataclass(frozen=True)
class InstructionMix:
    """Shares of each question kind (normalised), and of absent-existence questions asked on an
    image holding a sampled trigger. The defaults balance Yes and No (attribute and relation
    questions are true or false with probability 1/2), so no arm can win POPE by shifting its
    answer prior alone.

    ``class_balance`` balances them per class too: an absent-existence question draws its class
    from the class weights, as a present one does, and a trigger only picks the image it is asked
    on (one holding a class that makes the model say it), so every class is asked about as often
    present as absent; a caption describes an image holding a drawn class half of the time and one
    lacking it (as a negative would) otherwise. Targeting then moves which classes and images the
    data is about, never a class's answer prior."""

    existence_absent: float = 0.3
    existence_present: float = 0.3
    attribute: float = 0.15
    relation: float = 0.1
    caption: float = 0.15
    trigger_share: float = 0.6
    class_balance: bool = False

    def counts(self, n: int) -> dict[str, int]:
        """Exactly ``n`` records split by share (largest remainder, ties in QUESTION_KINDS order)."""
        shares = np.array([getattr(self, k) for k in QUESTION_KINDS], dtype=np.float64)
        if (shares < 0).any() or shares.sum() <= 0:
            raise ValueError(f"InstructionMix shares must be >= 0 with a positive sum: {self}")
        exact = n * shares / shares.sum()
        base = np.floor(exact).astype(int)
        for k in np.argsort(-(exact - base), kind="stable")[:n - base.sum()]:
            base[k] += 1
        return dict(zip(QUESTION_KINDS, (int(b) for b in base)))


@dataclass(frozen=True)
class GroundedQuestion:
    """A question about an image with its answer, and the facts that make the answer true (which
    :mod:`halluremedy.generate.reflective` turns into rationales)."""

    id: str
    kind: QuestionKind
    image: CocoImage
    question: str  # the user turn (yes/no questions end with POPE_SUFFIX)
    answer: str  # "Yes" / "No", or the caption
    category: str | None = None  # the class asked about
    trigger: CocoObject | None = None  # existence_absent: the present object that tempts the hallucination
    attribute: str | None = None
    value: str | None = None  # the asked attribute value
    subject: CocoObject | None = None  # relation: "is SUBJECT relation OTHER?"
    other: CocoObject | None = None
    relation: str | None = None  # asked ("left of", ...)
    true_relation: str | None = None  # what holds

    def turn(self) -> Turn:
        return Turn(self.question, self.answer)


def instruction_conversations(questions: Sequence[GroundedQuestion]) -> list[Conversation]:
    """One single-turn SFT conversation per question."""
    return [Conversation(q.image.file_name, (q.turn(),), q.id) for q in questions]


def write_instructions(path: str | os.PathLike, conversations: Sequence[Conversation]) -> None:
    """LLaVA conversation JSONL (``load_conversations`` reads it back)."""
    write_jsonl_atomic(Path(path), [c.to_llava() for c in conversations])


def _relation(a: CocoObject, b: CocoObject, image: CocoImage, margin: float) -> str | None:
    """The scene world's clearest relation "a REL b" from box centres (None when too close)."""
    def scene_object(o: CocoObject) -> SceneObject:
        return SceneObject(o.category, "", "", "", tuple(round(v) for v in o.bbox))

    return relation_between(scene_object(a), scene_object(b), max(image.width, image.height), margin)


def reference_phrase(image: CocoImage, o: CocoObject) -> str | None:
    """``"red circle"`` when colour + class name exactly one object of the image, else None."""
    color = o.attributes.get("color")
    if color is None:
        return None
    same = [p for p in image.objects if p.category == o.category and p.attributes.get("color") == color]
    return f"{color} {o.category}" if len(same) == 1 else None


class _Sampler:
    """Draws grounded questions of each kind; every draw may fail (None) and is retried.

    ``pairs``: the (present a, absent b) table negatives and captions aim at; ``weights.triggers``
    unless given."""

    def __init__(self, dataset: CocoDataset, weights: TargetWeights, mix: InstructionMix, margin: float,
                 vocab: ObjectVocabulary, pairs: dict[tuple[str, str], float] | None = None):
        self.images = dataset.images
        self.categories = list(dataset.categories)
        self.weights, self.mix, self.margin, self.vocab = weights, mix, margin, vocab
        self.with_class = {c: [k for k, im in enumerate(self.images) if c in im.categories] for c in self.categories}
        self.without_class = {c: [k for k, im in enumerate(self.images) if c not in im.categories]
                              for c in self.categories}
        self.class_keys = [c for c in self.categories if c in weights.classes]
        self.class_p = np.array([weights.classes[c] for c in self.class_keys])
        pairs = weights.triggers if pairs is None else pairs
        self.trigger_keys = [t for t in pairs if t[0] in self.with_class and t[1] in self.with_class]
        self.trigger_p = np.array([pairs[t] for t in self.trigger_keys])
        self.triggers_of: dict[str, tuple[list[str], np.ndarray]] = {}  # b -> (its triggers a, their weights)
        for (a, b), w in zip(self.trigger_keys, self.trigger_p):
            present, p = self.triggers_of.get(b, ([], np.zeros(0)))
            self.triggers_of[b] = (present + [a], np.append(p, w))
        self.values = {a: sorted({o.attributes[a] for im in self.images for o in im.objects if a in o.attributes})
                       for a in _ATTRIBUTES}
        self._pair_images: dict[tuple[str, str], list[int]] = {}

    def _class(self, rng) -> str:
        return self.class_keys[rng.choice(len(self.class_keys), p=self.class_p / self.class_p.sum())]

    def _pick(self, pool: list, rng):
        return pool[rng.integers(len(pool))] if pool else None

    def _negative_target(self, rng) -> tuple[CocoImage, str, CocoObject | None] | None:
        """(image, absent class, trigger object or None), the way negatives and captions aim: with
        probability ``mix.trigger_share`` on an image holding the present side of a trigger pair.
        Unbalanced, the pair is drawn by its weight; with ``mix.class_balance`` the absent class is
        drawn from the class weights first and its trigger from that class's pairs."""
        a = None
        aimed = self.trigger_keys and rng.random() < self.mix.trigger_share
        if aimed and not self.mix.class_balance:
            a, b = self.trigger_keys[rng.choice(len(self.trigger_keys), p=self.trigger_p / self.trigger_p.sum())]
        else:
            b = self._class(rng)
            if aimed and b in self.triggers_of:
                present, p = self.triggers_of[b]
                a = present[rng.choice(len(present), p=p / p.sum())]
        if a is None:
            k = self._pick(self.without_class[b], rng)
            return None if k is None else (self.images[k], b, None)
        if (a, b) not in self._pair_images:
            absent = set(self.without_class[b])
            self._pair_images[a, b] = [k for k in self.with_class[a] if k in absent]
        k = self._pick(self._pair_images[a, b], rng)
        if k is None:
            return None
        image = self.images[k]
        return image, b, self._pick([o for o in image.objects if o.category == a], rng)

    def draw(self, kind: QuestionKind, rng, qid: str) -> GroundedQuestion | None:
        if kind == "existence_absent":
            found = self._negative_target(rng)
            if found is None:
                return None
            image, b, trigger = found
            return GroundedQuestion(qid, kind, image, pope_question(b) + POPE_SUFFIX, "No", b, trigger=trigger)
        if kind == "caption":
            if self.mix.class_balance and rng.random() < 0.5:
                k = self._pick(self.with_class[self._class(rng)], rng)
                image = None if k is None else self.images[k]
            else:
                image = (self._negative_target(rng) or (None,))[0]
            if image is None:
                return None
            faithful = [k for k, c in enumerate(image.captions)
                        if {m.category for m in self.vocab.extract_mentions(c)} <= image.categories]
            k = self._pick(faithful, rng)
            if k is None:
                return None
            return GroundedQuestion(f"{qid}/caption{k}", kind, image, caption_prompt_by_index(k, image.captions[k]),
                                    image.captions[k])
        c = self._class(rng)
        k = self._pick(self.with_class[c], rng)
        if k is None:
            return None
        image = self.images[k]
        if kind == "existence_present":
            return GroundedQuestion(qid, kind, image, pope_question(c) + POPE_SUFFIX, "Yes", c)
        if kind == "attribute":
            instances = [o for o in image.objects if o.category == c]
            attribute = self._pick([a for a in _ATTRIBUTES if a in instances[0].attributes and self.values[a]], rng)
            if attribute is None:
                return None
            true = {o.attributes.get(attribute) for o in instances}
            if rng.random() < 0.5:
                value = self._pick(sorted(v for v in true if v is not None), rng)
                answer = "Yes"
            else:
                wrong = [v for v in self.values[attribute] if v not in true]
                if not wrong:
                    return None
                p = np.array([1.0 + len(wrong) * self.weights.values.get((attribute, c, v), 0.0) for v in wrong])
                value, answer = wrong[rng.choice(len(wrong), p=p / p.sum())], "No"
            return GroundedQuestion(qid, kind, image, pope_question(f"{value} {c}") + POPE_SUFFIX, answer, c,
                                    attribute=attribute, value=value)
        if kind == "relation":
            pairs = []
            for s in (o for o in image.objects if o.category == c):
                for o in image.objects:
                    rel = _relation(s, o, image, self.margin) if o is not s else None
                    if rel and reference_phrase(image, s) and reference_phrase(image, o):
                        pairs.append((s, o, rel))
            found = self._pick(pairs, rng)
            if found is None:
                return None
            s, o, rel = found
            asked, answer = (rel, "Yes") if rng.random() < 0.5 else (_OPPOSITE[rel], "No")
            question = f"Is the {reference_phrase(image, s)} {RELATION_PHRASES[asked]} the {reference_phrase(image, o)}?"
            return GroundedQuestion(qid, kind, image, question + POPE_SUFFIX, answer, c, subject=s, other=o,
                                    relation=asked, true_relation=rel)
        raise ValueError(f"unknown question kind {kind!r}; known: {list(QUESTION_KINDS)}")


def sample_questions(dataset: CocoDataset, weights: TargetWeights, n: int, *, seed: int,
                     mix: InstructionMix = InstructionMix(), margin: float = 0.15, max_tries: int = 200
                     ) -> list[GroundedQuestion]:
    """``n`` grounded questions, ``mix.counts(n)`` of each kind, in a seeded random order.

    Deterministic given ``(dataset, weights, n, seed, mix)``. Raises ValueError when a kind with
    a positive share finds nothing to ask in ``max_tries`` draws (e.g. relations without colours).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    sampler = _Sampler(dataset, weights, mix, margin, object_vocabulary(dataset))
    kinds = [k for k, count in mix.counts(n).items() for _ in range(count)]
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    out = []
    for i, kind in enumerate(kinds):
        for _ in range(max_tries):
            q = sampler.draw(kind, rng, f"{weights.name}/{seed}/{i}")
            if q is not None:
                out.append(q)
                break
        else:
            raise ValueError(f"sample_questions: no {kind} question found in {max_tries} draws on "
                             f"{dataset.split}; give that kind a zero share")
    return out


PairEdit = Literal["rename", "add"]
PAIR_EDITS: tuple[PairEdit, ...] = ("rename", "add")


def targeted_preference_pairs(dataset: CocoDataset, weights: TargetWeights, n: int, *, seed: int,
                              edit: PairEdit = "rename", mix: InstructionMix = InstructionMix(),
                              floor: float = 0.05, max_tries: int = 50) -> list[PreferenceRecord]:
    """``n`` caption pairs: chosen = a faithful reference caption, rejected = it with one hallucination.

    ``edit="rename"``: the image is drawn as negatives are, from ``weights.misnamings`` (holding a,
    not b), and one mentioned present object is renamed to an absent class drawn from its row of
    that table. ``edit="add"``: the image holds a sampled trigger, and one absent object drawn from
    ``weights.triggers`` is added. Targeted weights aim both at the model's own errors; uniform
    ones draw every pair alike.
    """
    if edit not in PAIR_EDITS:
        raise ValueError(f"edit must be one of {PAIR_EDITS}, got {edit!r}")
    table = "misnamings" if edit == "rename" else "triggers"
    vocab = object_vocabulary(dataset)
    surface = dataset.synonyms or COCO_SURFACE_WORDS
    editor = RuleBasedEditor(vocab, weights.cooccurrence(dataset.categories, floor, table=table), surface_words=surface,
                             lexicon=EditLexicon.for_dataset(dataset),
                             cooccur_modes=("replace",) if edit == "rename" else ("add",))
    sampler = _Sampler(dataset, weights, mix, 0.15, vocab, pairs=getattr(weights, table) or weights.triggers)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        for _ in range(max_tries):
            q = sampler.draw("caption", rng, f"{weights.name}-pair/{seed}/{i}")
            if q is None:
                continue
            rejected = editor.edit(q.image, q.answer, "cooccur", rng)
            if rejected is not None:
                records.append(PreferenceRecord(q.id, q.image.file_name, q.question, q.answer, (rejected,),
                                                source=f"{weights.name}:{edit}"))
                break
        else:
            raise ValueError(f"targeted_preference_pairs: no editable caption found in {max_tries} draws")
    return records

