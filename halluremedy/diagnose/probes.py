"""Diagnosis (DFTG step 1): where does *this* model hallucinate?

The model is run over a COCO-format image set (a diagnosis split, never the held-out evaluation
split) and what it says is compared with what is there (a :class:`~.truth.TruthBackend`):

* **detailed captions** (``DETAILED_CAPTION_PROMPT``, greedy), parsed as CHAIR parses them:
  object mentions -> per-class false positives (named but absent: hallucinations) and false
  negatives (present but never named); the colour / size words in front of a mention -> attribute
  confusions ("said blue, the circle is red");
* **short captions** (``CAPTION_PROMPT``), whose number words ("two red circles") give counts;
* **existence probes**: "Is there a {class} in the image?" + ``POPE_SUFFIX`` for *every* class of
  the vocabulary on every image -> per-class yes-on-absent / no-on-present rates;
* **attribute probes**: "Is there a {value} {class} in the image?" for each present class, once
  with a value one of its instances has (expected yes) and once with a value none has (expected
  no). Yes/no questions, because they need no answer words the model may lack (the tiny model's
  vocabulary has no "what"/"colour"); a probe whose words the tokenizer does not know is skipped.

Then (:func:`analyse`, pure, testable on fake answers) per class::

    caption_fp_rate = images whose caption names c while c is absent / images where c is absent
    caption_fn_rate = images whose caption omits c while c is present / images where c is present
    probe_fp_rate   = "yes" to c on images without c / images without c
    probe_fn_rate   = "no" to c on images with c / images with c
    hallucination_rate = mean of the FP rates that have a denominator (the ranking score)
    miss_rate          = mean of the FN rates that have a denominator
    error_rate         = (hallucination_rate + miss_rate) / 2

and co-occurrence triggers: for an ordered pair (A, B), on images with A present and B absent,
how often B is hallucinated (caption names it, or the probe says yes) against the same rate on
images with neither (``base_rate``); ``excess = count - opportunities * base_rate`` ranks them.

Misnamings: a hallucinated caption mention of B whose colour/size words ("a large blue moon")
describe a present object of another class A ("the large blue circle") is counted as A named B,
split evenly when the words fit several present classes (those the caption does not name
otherwise first). A mention without such words, or that fits no present object, stays unexplained;
``summary["misnamed_share"]`` is the explained share of hallucinated mentions.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np

from halluremedy.data.coco import CocoDataset, CocoObject, write_json_atomic
from halluremedy.data.scenes.captions import NUMBER_WORDS
from halluremedy.diagnose.truth import AnnotationBackend, TruthBackend
from halluremedy.eval.chair import ObjectVocabulary, chair
from halluremedy.eval.pope import parse_pope_answer, pope_metrics
from halluremedy.eval.run import object_vocabulary
from halluremedy.eval.sources import cooccurrence_partners, hallucination_sources
from halluremedy.eval.text import tokenize
from halluremedy.models.generate import Decoding, generate_answers
from halluremedy.prompts import (
    CAPTION_PROMPT,
    DETAILED_CAPTION_PROMPT,
    POPE_SUFFIX,
    pope_question,
)

__all__ = [
    "ATTRIBUTES",
    "AttributeConfusion",
    "ClassStats",
    "Diagnosis",
    "Probe",
    "ProbeConfig",
    "ProbeRun",
    "Trigger",
    "TruthImage",
    "analyse",
    "attribute_probes",
    "diagnose",
    "existence_probes",
    "run_probes",
    "stated_attributes",
    "stated_counts",
]

ATTRIBUTES: tuple[str, ...] = ("color", "size")  # annotation keys probed by default
_COUNT_WORDS: dict[str, int] = {"a": 1, "an": 1, "one": 1, **{w: n for n, w in NUMBER_WORDS.items()}}


@dataclass(frozen=True)
class TruthImage:
    """One diagnosed image: what the backend says it holds."""

    image_id: int
    file_name: str
    objects: tuple[CocoObject, ...]
    classes: frozenset[str]  # backend categories, united with classes its reference captions name

    def values(self, category: str, attribute: str) -> set[str]:
        """The values of ``attribute`` over the instances of ``category``."""
        return {o.attributes[attribute] for o in self.objects if o.category == category and attribute in o.attributes}

    def count(self, category: str) -> int:
        return sum(o.category == category for o in self.objects)


@dataclass(frozen=True)
class Probe:
    """One yes/no question about one image. ``question`` is without ``POPE_SUFFIX``."""

    image_id: int
    kind: Literal["existence", "attribute"]
    category: str
    question: str
    expected: Literal["yes", "no"]
    attribute: str | None = None
    value: str | None = None  # the probed attribute value
    true_values: tuple[str, ...] = ()  # values the class's instances have (attribute probes)


def existence_probes(image: TruthImage, classes: Sequence[str]) -> list[Probe]:
    """"Is there a {c} in the image?" for every class, expected yes iff ``c`` is in the image."""
    return [Probe(image.image_id, "existence", c, pope_question(c), "yes" if c in image.classes else "no")
            for c in classes]


def attribute_probes(image: TruthImage, attribute: str, values: Sequence[str], rng: np.random.Generator) -> list[Probe]:
    """For each present class (sorted) whose instances annotate ``attribute``: a probe with a value
    some instance has (expected yes) and one with a value of ``values`` that none has (expected
    no, when such a value exists), e.g. "Is there a red circle in the image?"."""
    probes = []
    for category in sorted({o.category for o in image.objects}):
        true = sorted(image.values(category, attribute))
        if not true:
            continue
        wrong = [v for v in values if v not in true]
        picks = [(true[rng.integers(len(true))], "yes")]
        if wrong:
            picks.append((wrong[rng.integers(len(wrong))], "no"))
        for value, expected in picks:
            probes.append(Probe(image.image_id, "attribute", category, pope_question(f"{value} {category}"),
                                expected, attribute, value, tuple(true)))
    return probes


@dataclass(frozen=True)
class ProbeConfig:
    """What diagnosis asks. ``images``: how many images of the split (drawn with ``seed``)."""

    images: int = 300
    seed: int = 0
    caption_prompt: str = DETAILED_CAPTION_PROMPT
    count_prompt: str | None = CAPTION_PROMPT  # None: no count probe
    max_new_tokens: int = 64
    existence: bool = True
    attributes: tuple[str, ...] = ATTRIBUTES
    caption_truth: bool = True  # also count classes the reference captions name as present (CHAIR's rule)
    batch_size: int = 64
    progress: bool = False


@dataclass
class ProbeRun:
    """Everything the model said during diagnosis, with the truth it is compared against."""

    images: list[TruthImage]
    categories: list[str]
    captions: dict[int, str]
    short_captions: dict[int, str]
    probes: list[Probe]
    answers: list[str]  # one per probe
    skipped: list[str] = field(default_factory=list)  # probe families left out, and why
    attribute_values: dict[str, list[str]] = field(default_factory=dict)  # attribute -> values the dataset uses


def _tokenizer_knows(tokenizer, text: str) -> bool:
    """False when the tokenizer maps some word of ``text`` to its unknown token (word-level vocabularies)."""
    unk = tokenizer.unk_token_id
    return unk is None or unk not in tokenizer(text, add_special_tokens=False).input_ids


def run_probes(model, processor, dataset: CocoDataset, cfg: ProbeConfig = ProbeConfig(),
               backend: TruthBackend | None = None) -> ProbeRun:
    """Run the model over ``cfg.images`` images of ``dataset``: captions, short captions, probes."""
    backend = backend or AnnotationBackend()
    vocab = object_vocabulary(dataset)
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.images, len(dataset))
    chosen = [dataset.images[i] for i in sorted(rng.choice(len(dataset), size=n, replace=False))]
    pil = {im.image_id: dataset.load_image(im) for im in chosen}
    images = []
    for im in chosen:
        objects = tuple(backend.objects(im, pil[im.image_id]))
        classes = {o.category for o in objects}
        if cfg.caption_truth:
            classes |= {m.category for c in im.captions for m in vocab.extract_mentions(c)}
        images.append(TruthImage(im.image_id, im.file_name, objects, frozenset(classes)))

    def ask(questions: list[str], ids: list[int], decoding: Decoding, what: str) -> list[str]:
        return generate_answers(model, processor, [pil[i] for i in ids], questions, decoding,
                                batch_size=cfg.batch_size, progress=what if cfg.progress else None)

    ids = [im.image_id for im in images]
    caption_decoding = Decoding(0.0, cfg.max_new_tokens)
    captions = dict(zip(ids, ask([cfg.caption_prompt] * n, ids, caption_decoding, "diagnose: captions")))
    short = {}
    if cfg.count_prompt:
        short = dict(zip(ids, ask([cfg.count_prompt] * n, ids, caption_decoding, "diagnose: short captions")))

    probes: list[Probe] = []
    skipped: list[str] = []
    if cfg.existence:
        probes += [p for im in images for p in existence_probes(im, dataset.categories)]
    attribute_values = {a: sorted({o.attributes[a] for im in dataset.images for o in im.objects if a in o.attributes})
                        for a in cfg.attributes}
    for attribute, values in attribute_values.items():
        unknown = [v for v in values if not _tokenizer_knows(processor.tokenizer, v)]
        if not values or unknown:
            why = "no image annotates it" if not values else f"the tokenizer does not know {unknown}"
            skipped.append(f"attribute probes for {attribute!r}: {why}")
            continue
        for k, im in enumerate(images):
            probes += attribute_probes(im, attribute, values, np.random.default_rng([cfg.seed, k, len(attribute)]))
    answers = ask([p.question + POPE_SUFFIX for p in probes], [p.image_id for p in probes], Decoding(0.0, 4),
                  "diagnose: probes") if probes else []
    return ProbeRun(images, list(dataset.categories), captions, short, probes, answers, skipped, attribute_values)


# --- analysis ------------------------------------------------------------------------------------

def _words_before(tokens: Sequence[str], index: int, words: Mapping[str, str]) -> list[str]:
    """The run of ``words`` right in front of ``tokens[index]``, nearest first ("a small red disc":
    red, small)."""
    found = []
    for token in reversed(tokens[:index]):
        if token not in words:
            break
        found.append(token)
    return found


def stated_attributes(caption: str, vocab: ObjectVocabulary, words: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(category, attribute, value)`` for each attribute word right in front of an object mention
    ("a small red disc" -> (circle, size, small), (circle, color, red)). ``words``: value -> attribute."""
    tokens = tokenize(caption)
    return [(m.category, words[w], w) for m in vocab.extract_mentions(caption)
            for w in _words_before(tokens, m.token_index, words)]


def stated_counts(caption: str, vocab: ObjectVocabulary, attribute_words: Mapping[str, str]) -> Counter[str]:
    """Objects per class a caption states: the number word (or a/an) in front of each mention,
    attribute words skipped ("two red circles and a disc" -> circle: 3); 1 when there is none."""
    tokens = tokenize(caption)
    counts: Counter[str] = Counter()
    for m in vocab.extract_mentions(caption):
        j = m.token_index - 1 - len(_words_before(tokens, m.token_index, attribute_words))
        counts[m.category] += _COUNT_WORDS.get(tokens[j], 1) if j >= 0 else 1
    return counts


@dataclass(frozen=True)
class ClassStats:
    """Per-class error counts (rates are properties; 0.0 where the denominator is 0)."""

    category: str
    n_present: int  # diagnosed images holding the class
    n_absent: int
    caption_fp: int  # captions naming it while absent
    caption_fn: int  # captions omitting it while present
    probe_yes_absent: int
    probe_no_present: int
    probe_absent: int  # existence probes asked while absent
    probe_present: int
    count_checked: int = 0  # short captions naming a present class
    count_wrong: int = 0  # ... with the wrong number

    @staticmethod
    def _rate(a: int, b: int) -> float:
        return a / b if b else 0.0

    @property
    def caption_fp_rate(self) -> float:
        return self._rate(self.caption_fp, self.n_absent)

    @property
    def caption_fn_rate(self) -> float:
        return self._rate(self.caption_fn, self.n_present)

    @property
    def probe_fp_rate(self) -> float:
        return self._rate(self.probe_yes_absent, self.probe_absent)

    @property
    def probe_fn_rate(self) -> float:
        return self._rate(self.probe_no_present, self.probe_present)

    @property
    def count_error_rate(self) -> float:
        return self._rate(self.count_wrong, self.count_checked)

    @property
    def hallucination_rate(self) -> float:
        """Mean of the caption and probe false-positive rates that have a denominator."""
        return self._mean_rate((self.caption_fp_rate, self.n_absent), (self.probe_fp_rate, self.probe_absent))

    @property
    def miss_rate(self) -> float:
        """Mean of the caption and probe false-negative rates that have a denominator."""
        return self._mean_rate((self.caption_fn_rate, self.n_present), (self.probe_fn_rate, self.probe_present))

    @property
    def error_rate(self) -> float:
        """Mean of ``hallucination_rate`` and ``miss_rate``: also high for a class the model fails to see,
        whose misses surface as hallucinations of the classes it is mistaken for."""
        return (self.hallucination_rate + self.miss_rate) / 2

    @staticmethod
    def _mean_rate(*rates: tuple[float, int]) -> float:
        kept = [rate for rate, denominator in rates if denominator]
        return sum(kept) / len(kept) if kept else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "caption_fp_rate": self.caption_fp_rate, "caption_fn_rate": self.caption_fn_rate,
                "probe_fp_rate": self.probe_fp_rate, "probe_fn_rate": self.probe_fn_rate,
                "count_error_rate": self.count_error_rate, "hallucination_rate": self.hallucination_rate,
                "miss_rate": self.miss_rate, "error_rate": self.error_rate}


@dataclass(frozen=True)
class AttributeConfusion:
    """The model said ``said`` about a ``category`` whose instances have ``true`` ("/"-joined)."""

    attribute: str
    category: str
    true: str
    said: str
    count: int
    source: Literal["caption", "probe"]


@dataclass(frozen=True)
class Misnaming:
    """Captions named a present ``true`` object as the absent class ``said`` (see the module docstring);
    ``count`` is fractional where a description fits objects of several present classes."""

    true: str
    said: str
    count: float


def misnamed_objects(caption: str, image: TruthImage, vocab: ObjectVocabulary, words: Mapping[str, str]
                     ) -> tuple[list[tuple[str, str, float]], int]:
    """(``(true class, said class, share)`` per explained hallucinated mention, hallucinated mentions)."""
    tokens = tokenize(caption)
    mentions = vocab.extract_mentions(caption)
    named = {m.category for m in mentions}
    found, hallucinated = [], 0
    for m in mentions:
        if m.category in image.classes:
            continue
        hallucinated += 1
        described = {words[w]: w for w in _words_before(tokens, m.token_index, words)}
        if not described:
            continue
        fits = {o.category for o in image.objects if o.category != m.category
                and all(o.attributes.get(a) == v for a, v in described.items())}
        fits = (fits - named) or fits
        found += [(c, m.category, 1.0 / len(fits)) for c in sorted(fits)]
    return found, hallucinated


@dataclass(frozen=True)
class Trigger:
    """Present ``present`` -> hallucinated ``hallucinated``, per source (see the module docstring).

    Opportunities are images without ``hallucinated``: with ``present`` (``opportunities``) or
    without it (``base_opportunities``). Counts are those where the caption named it
    (``caption_*``) or the existence probe said yes (``probe_*``).
    """

    present: str
    hallucinated: str
    opportunities: int
    base_opportunities: int
    caption_count: int
    caption_base_count: int
    probe_count: int
    probe_base_count: int

    @staticmethod
    def _rate(a: int, b: int) -> float:
        return a / b if b else 0.0

    def rates(self, source: Literal["caption", "probe"]) -> tuple[float, float]:
        """(rate with ``present``, rate without it) of one source."""
        count, base = getattr(self, f"{source}_count"), getattr(self, f"{source}_base_count")
        return self._rate(count, self.opportunities), self._rate(base, self.base_opportunities)

    def source_excess(self, source: Literal["caption", "probe"]) -> float:
        """Hallucinations of one source beyond what the rate without the trigger predicts."""
        return getattr(self, f"{source}_count") - self.opportunities * self.rates(source)[1]

    @property
    def excess(self) -> float:
        """Caption excess + probe excess: the ranking score."""
        return self.source_excess("caption") + self.source_excess("probe")

    def to_dict(self) -> dict:
        (cr, cb), (pr, pb) = self.rates("caption"), self.rates("probe")
        return {**asdict(self), "caption_rate": cr, "caption_base_rate": cb, "probe_rate": pr, "probe_base_rate": pb,
                "excess": self.excess}


@dataclass
class Diagnosis:
    """A model's hallucination profile on one image set; JSON round-trips through to_dict/from_dict."""

    meta: dict  # model, dataset, backend, config, skipped probe families
    summary: dict[str, float]
    classes: dict[str, ClassStats]
    attribute_confusions: list[AttributeConfusion]
    attribute_accuracy: dict[str, dict[str, float]]  # attribute -> {"caption_checked", "caption_wrong", ...}
    triggers: list[Trigger]  # excess-descending
    examples: list[dict]
    misnamings: list[Misnaming] = field(default_factory=list)  # count-descending

    def worst_classes(self, k: int | None = None) -> list[ClassStats]:
        """Classes by hallucination rate, highest first (ties: vocabulary order)."""
        ranked = sorted(self.classes.values(), key=lambda s: -s.hallucination_rate)
        return ranked if k is None else ranked[:k]

    def top_triggers(self, k: int | None = None, *, min_excess: float = 0.0) -> list[Trigger]:
        found = [t for t in self.triggers if t.excess > min_excess]
        return found if k is None else found[:k]

    def to_dict(self) -> dict:
        return {"meta": self.meta, "summary": self.summary,
                "classes": {c: s.to_dict() for c, s in self.classes.items()},
                "attribute_confusions": [asdict(a) for a in self.attribute_confusions],
                "attribute_accuracy": self.attribute_accuracy,
                "triggers": [t.to_dict() for t in self.triggers], "examples": self.examples,
                "misnamings": [asdict(m) for m in self.misnamings]}

    @classmethod
    def from_dict(cls, d: dict) -> Diagnosis:
        def pick(kind, row: dict):
            return kind(**{f.name: row[f.name] for f in fields(kind)})

        return cls(d["meta"], d["summary"], {c: pick(ClassStats, s) for c, s in d["classes"].items()},
                   [pick(AttributeConfusion, a) for a in d["attribute_confusions"]], d["attribute_accuracy"],
                   [pick(Trigger, t) for t in d["triggers"]], d["examples"],
                   [pick(Misnaming, m) for m in d.get("misnamings", [])])

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Diagnosis:
        return cls.from_dict(json.loads(Path(path).read_text()))


def analyse(run: ProbeRun, vocab: ObjectVocabulary, meta: dict | None = None, n_examples: int = 8) -> Diagnosis:
    """Turn a :class:`ProbeRun` into a :class:`Diagnosis` (no model involved)."""
    if len(run.answers) != len(run.probes):
        raise ValueError(f"{len(run.probes)} probes but {len(run.answers)} answers")
    cats = run.categories
    truth = {im.image_id: im for im in run.images}
    attribute_words = {o.attributes[a]: a for im in run.images for o in im.objects for a in ATTRIBUTES
                       if a in o.attributes}
    attribute_words.update({v: a for a, values in run.attribute_values.items() for v in values})
    mentioned = {i: {m.category for m in vocab.extract_mentions(c)} for i, c in run.captions.items()}
    said_yes: dict[int, dict[str, bool]] = defaultdict(dict)
    for p, a in zip(run.probes, run.answers, strict=True):
        if p.kind == "existence":
            said_yes[p.image_id][p.category] = parse_pope_answer(a) == "yes"

    # per-class caption / probe / count errors
    tally: dict[str, Counter[str]] = {c: Counter() for c in cats}
    for im in run.images:
        cap = mentioned.get(im.image_id)
        yes = said_yes.get(im.image_id, {})
        counts = stated_counts(run.short_captions[im.image_id], vocab, attribute_words) \
            if im.image_id in run.short_captions else None
        for c in cats:
            t = tally[c]
            present = c in im.classes
            t["n_present" if present else "n_absent"] += 1
            if cap is not None:
                t["caption_fn" if present else "caption_fp"] += (c in cap) != present
            if c in yes:
                t["probe_present" if present else "probe_absent"] += 1
                t["probe_no_present" if present else "probe_yes_absent"] += yes[c] != present
            if counts is not None and present and counts[c] and im.count(c):
                t["count_checked"] += 1
                t["count_wrong"] += counts[c] != im.count(c)
    classes = {c: ClassStats(c, **{f.name: tally[c][f.name] for f in fields(ClassStats) if f.name != "category"})
               for c in cats}

    # attribute confusions: caption words, then probes
    confusions: Counter[tuple[str, str, str, str, str]] = Counter()
    accuracy: dict[str, Counter[str]] = defaultdict(Counter)
    for image_id, caption in run.captions.items():
        im = truth[image_id]
        for category, attribute, value in stated_attributes(caption, vocab, attribute_words):
            true = im.values(category, attribute)
            if not true:
                continue  # the class is absent (a hallucination, counted above) or not annotated
            accuracy[attribute]["caption_checked"] += 1
            if value not in true:
                accuracy[attribute]["caption_wrong"] += 1
                confusions[attribute, category, "/".join(sorted(true)), value, "caption"] += 1
    for p, a in zip(run.probes, run.answers, strict=True):
        if p.kind != "attribute":
            continue
        answer = parse_pope_answer(a)
        accuracy[p.attribute]["probe_checked"] += 1
        accuracy[p.attribute]["probe_wrong"] += answer != p.expected
        if p.expected == "no" and answer == "yes":
            confusions[p.attribute, p.category, "/".join(p.true_values), p.value, "probe"] += 1
    attribute_confusions = [AttributeConfusion(attribute, category, true, said, n, source)
                            for (attribute, category, true, said, source), n in
                            sorted(confusions.items(), key=lambda kv: (-kv[1], kv[0]))]
    attribute_accuracy = {}
    for attribute, n in accuracy.items():
        row = {k: float(v) for k, v in n.items()}
        for source in ("caption", "probe"):
            if n[f"{source}_checked"]:
                row[f"{source}_accuracy"] = 1.0 - n[f"{source}_wrong"] / n[f"{source}_checked"]
        attribute_accuracy[attribute] = row

    triggers = _triggers(run, mentioned, said_yes)

    misnamed: Counter[tuple[str, str]] = Counter()
    hallucinated_mentions, explained = 0, 0.0
    for image_id, caption in run.captions.items():
        found, n = misnamed_objects(caption, truth[image_id], vocab, attribute_words)
        hallucinated_mentions += n
        explained += sum(share for *_, share in found)  # each explained mention's shares sum to 1
        for true, said, share in found:
            misnamed[true, said] += share
    misnamings = [Misnaming(true, said, n) for (true, said), n in
                  sorted(misnamed.items(), key=lambda kv: (-kv[1], kv[0]))]

    summary: dict[str, float] = {"images": float(len(run.images))}
    if run.captions:
        scores = chair(run.captions, {i: set(im.classes) for i, im in truth.items()}, vocab)
        summary.update(chair_s=scores.chair_s, chair_i=scores.chair_i, caption_recall=scores.recall,
                       caption_length=scores.mean_length)
        sources = hallucination_sources(scores.per_caption, cooccurrence_partners(im.classes for im in run.images))
        summary.update({f"source_{k}": v for k, v in sources["share"].items()}, prior_share=sources["prior_share"])
    existence = [(p.expected, parse_pope_answer(a)) for p, a in zip(run.probes, run.answers) if p.kind == "existence"]
    if existence:
        m = pope_metrics([a for _, a in existence], [e for e, _ in existence])
        summary.update(probe_accuracy=m["accuracy"], probe_f1=m["f1"], probe_yes_ratio=m["yes_ratio"],
                       probe_fp_rate=m["fp"] / max(1, m["fp"] + m["tn"]), probe_fn_rate=m["fn"] / max(1, m["fn"] + m["tp"]))
    checked = sum(s.count_checked for s in classes.values())
    if checked:
        summary["count_accuracy"] = 1.0 - sum(s.count_wrong for s in classes.values()) / checked
    summary["mean_hallucination_rate"] = float(np.mean([s.hallucination_rate for s in classes.values()]))
    if hallucinated_mentions:
        summary["misnamed_share"] = explained / hallucinated_mentions

    examples = []
    for image_id, caption in run.captions.items():
        hallucinated = sorted(mentioned[image_id] - truth[image_id].classes)
        if hallucinated and len(examples) < n_examples:
            examples.append({"image_id": image_id, "file_name": truth[image_id].file_name, "caption": caption,
                             "truth": sorted(truth[image_id].classes), "hallucinated": hallucinated})
    meta = {**(meta or {}), "skipped": list(run.skipped)}
    return Diagnosis(meta, summary, classes, attribute_confusions, attribute_accuracy, triggers, examples,
                     misnamings)


def _triggers(run: ProbeRun, mentioned: dict[int, set[str]], said_yes: dict[int, dict[str, bool]]) -> list[Trigger]:
    """Every ordered pair with a hallucination while the trigger is present, excess-descending."""
    cats = run.categories
    rows = []
    for a in cats:
        for b in cats:
            if a == b:
                continue
            n: Counter[str] = Counter()
            for im in run.images:
                if b in im.classes:
                    continue
                key = "" if a in im.classes else "base_"
                n[f"{key}opportunities"] += 1
                n[f"caption_{key}count"] += b in mentioned.get(im.image_id, ())
                n[f"probe_{key}count"] += said_yes.get(im.image_id, {}).get(b, False)
            if n["caption_count"] or n["probe_count"]:
                rows.append(Trigger(a, b, *(n[f.name] for f in fields(Trigger)[2:])))
    return sorted(rows, key=lambda t: (-t.excess, -(t.caption_count + t.probe_count), cats.index(t.present),
                                       cats.index(t.hallucinated)))


def diagnose(model, processor, dataset: CocoDataset, cfg: ProbeConfig = ProbeConfig(),
             backend: TruthBackend | None = None, *, model_name: str = "") -> Diagnosis:
    """Run the probes and analyse them: the model's hallucination profile on ``dataset``.

    ``dataset`` must not be the split the model is evaluated on: the diagnosis steers training data.
    """
    backend = backend or AnnotationBackend()
    if len(dataset) < cfg.images:
        warnings.warn(f"diagnosis: {dataset.split} has {len(dataset)} images, fewer than the {cfg.images} asked",
                      stacklevel=2)
    run = run_probes(model, processor, dataset, cfg, backend)
    meta = {"model": model_name, "dataset": f"{dataset.root}:{dataset.split}", "backend": backend.name,
            "config": asdict(cfg)}
    return analyse(run, object_vocabulary(dataset), meta)
