"""CHAIR (Rohrbach et al., 2018): how many objects a caption names that are not in the image.

Pipeline, as in the original CHAIR code:

1. Parse a caption into object mentions (:meth:`ObjectVocabulary.extract_mentions`): lowercase,
   tokenize, singularize every word, merge multi-word phrases left to right (longest first), map
   surface words to canonical classes, apply the vocabulary's drop rules. Every mention counts,
   repeats included ("a dog chases a dog" is two dog mentions).
2. Ground-truth objects of an image (:func:`ground_truth_objects`): its annotated categories
   united with the classes parsed from its reference captions.
3. Score (:func:`chair`)::

       CHAIR_i = hallucinated mentions / all mentions
       CHAIR_s = captions with >= 1 hallucinated mention / all captions
       recall  = sum over images |distinct mentioned classes & GT| / sum over images |GT|
       length  = mean whitespace-separated words per caption

All rates are fractions in [0, 1] (papers print them x 100).

Two compat modes parse COCO captions (:data:`COMPAT_MODES`, :func:`coco_vocabulary`):

* ``"halluremedy"`` (the default everywhere it was before): :class:`ObjectVocabulary` with this
  package's tokenizer, singularizer and synonym table, which fix the original's bugs and fill
  vocabulary gaps;
* ``"reference"``: :class:`~halluremedy.eval.chair_reference.ReferenceVocabulary`, the original
  code's parse exactly (its bugs included), for numbers comparable with published tables.

Every difference between the two, with an example each, is listed in ``docs/chair.md``. Every
result carries :func:`chair_signature` (``chair:reference|syn:lisaanne-2018@585f2d9.<sha8>|...``);
compare CHAIR numbers only across equal signatures.

Which vocabulary for a loaded :class:`~halluremedy.data.coco.CocoDataset` ``ds``:
:func:`halluremedy.eval.run.object_vocabulary` (its own synonym table when it ships one, as the
scene world does, else COCO in the chosen mode).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from halluremedy.data.coco import CocoImage
from halluremedy.eval.coco_synonyms import COCO_CLASSES, COCO_EXCLUSIONS, coco_phrase_table
from halluremedy.eval.text import is_word, singularize, tokenize

__all__ = [
    "COMPAT_MODES",
    "CaptionChair",
    "ChairResult",
    "Mention",
    "MentionParser",
    "ObjectVocabulary",
    "chair",
    "chair_signature",
    "class_row",
    "coco_vocabulary",
    "ground_truth_objects",
]

#: ``"halluremedy"``: this package's parser (the default); ``"reference"``: the original CHAIR code's.
COMPAT_MODES = ("halluremedy", "reference")
SIGNATURE_VERSION = "v1"  # bump when a mode's parsing rules change


@dataclass(frozen=True)
class Mention:
    """One object mention in a caption.

    ``text``: the caption's words as written (lowercase, e.g. ``"hot dogs"``); ``lemma``: their
    singular form, the key the vocabulary matched (``"hot dog"``); ``category``: the canonical
    class; ``token_index``: index of the first word in ``tokenize(caption)``.
    """

    text: str
    lemma: str
    category: str
    token_index: int


class MentionParser(Protocol):
    """What :func:`chair` and :func:`ground_truth_objects` need of a vocabulary: its classes, the
    mentions of a caption, and a signature naming how they were found (:func:`chair_signature`).
    :class:`ObjectVocabulary` and :class:`~halluremedy.eval.chair_reference.ReferenceVocabulary` are two."""

    classes: tuple[str, ...]
    compat: str
    synonym_table: str
    tokenizer: str
    singularizer: str

    @property
    def signature(self) -> str: ...

    def extract_mentions(self, caption: str) -> list[Mention]: ...


def chair_signature(vocab: MentionParser) -> str:
    """How CHAIR numbers were computed, sacrebleu-style, e.g.
    ``chair:reference|syn:lisaanne-2018@585f2d9.<sha8>|tok:treebank|sing:pattern-3.6|v1``.

    Fields: compat mode, synonym table (name, for the reference the code revision, and the first 8
    hex digits of the SHA-256 of the table's content and phrase rules), tokenizer, singularizer, and
    :data:`SIGNATURE_VERSION`. Numbers with different signatures are not comparable.
    """
    return (f"chair:{vocab.compat}|syn:{vocab.synonym_table}|tok:{vocab.tokenizer}|sing:{vocab.singularizer}"
            f"|{SIGNATURE_VERSION}")


def coco_vocabulary(compat: str = "halluremedy", *, reference_revision: str | None = None) -> MentionParser:
    """The COCO vocabulary of a compat mode: :meth:`ObjectVocabulary.coco`, or the original CHAIR
    parser (:class:`~halluremedy.eval.chair_reference.ReferenceVocabulary`) at ``reference_revision``
    (default: its ``DEFAULT_REVISION``).

    Raises ValueError for a mode not in :data:`COMPAT_MODES`, or a revision given outside reference mode.
    """
    if compat not in COMPAT_MODES:
        raise ValueError(f"unknown CHAIR compat mode {compat!r}; expected one of {', '.join(COMPAT_MODES)}")
    if compat == "halluremedy":
        if reference_revision is not None:
            raise ValueError("reference_revision applies to compat='reference' only")
        return ObjectVocabulary.coco()
    from halluremedy.eval.chair_reference import DEFAULT_REVISION, ReferenceVocabulary  # it imports this module

    return ReferenceVocabulary(reference_revision or DEFAULT_REVISION)


def _lemma_words(phrase: str) -> tuple[str, ...]:
    """Singular word sequence of a surface phrase (hyphens count as spaces)."""
    tokens = [t for t in tokenize(phrase) if t != "-"]
    if not tokens or not all(is_word(t) for t in tokens):
        raise ValueError(f"surface form {phrase!r} must be words separated by spaces or hyphens")
    return tuple(singularize(t) for t in tokens)


class ObjectVocabulary:
    """Surface words and phrases -> canonical object classes, with CHAIR's drop rules.

    ``phrases`` maps a surface phrase to its class, or to ``None`` for a phrase that is read as one
    unit and dropped (``"train track"``: no train). Every class name is a surface form of itself.
    ``exclusions`` maps a surface word to a class: the word is no mention in a caption that also
    mentions that class (``{"seat": "toilet"}``). Phrases are stored singularized, so ``"skis"``,
    ``"ski"`` and ``"skis."`` in a caption all match the same entry.

    ``name`` names the table in :attr:`signature` (with a hash of its content).

    Raises ValueError when two classes claim the same (singularized) phrase or a phrase names an
    unknown class.
    """

    compat = "halluremedy"
    tokenizer = "halluremedy"
    singularizer = "halluremedy"

    def __init__(self, classes: Iterable[str], phrases: Mapping[str, str | None],
                 exclusions: Mapping[str, str] | None = None, *, name: str = "custom") -> None:
        self.classes: tuple[str, ...] = tuple(classes)
        known = set(self.classes)
        self._table: dict[tuple[str, ...], str | None] = {}
        for phrase, category in [*((c, c) for c in self.classes), *phrases.items()]:
            if category is not None and category not in known:
                raise ValueError(f"surface form {phrase!r} maps to {category!r}, which is not a vocabulary class")
            key = _lemma_words(phrase)
            if self._table.get(key, category) != category:
                raise ValueError(f"surface form {phrase!r} (read as {' '.join(key)!r}) is claimed by both "
                                 f"{self._table[key]!r} and {category!r}")
            self._table[key] = category
        self._longest_phrase = max(len(key) for key in self._table)
        self.exclusions: dict[str, str] = {}
        for word, category in (exclusions or {}).items():
            if category not in known:
                raise ValueError(f"exclusion {word!r} -> {category!r}: {category!r} is not a vocabulary class")
            self.exclusions[" ".join(_lemma_words(word))] = category
        content = repr((self.classes, sorted(self._table.items(), key=lambda kv: (kv[0], kv[1] or "")),
                        sorted(self.exclusions.items())))
        self.synonym_table = f"{name}.{hashlib.sha256(content.encode()).hexdigest()[:8]}"

    @property
    def signature(self) -> str:
        """:func:`chair_signature` of this vocabulary, e.g. ``chair:halluremedy|syn:halluremedy-coco.<sha8>|...``."""
        return chair_signature(self)

    @classmethod
    def coco(cls) -> ObjectVocabulary:
        """The 80 COCO classes with CHAIR's synonyms and special rules (see :mod:`.coco_synonyms`)."""
        return cls(COCO_CLASSES, coco_phrase_table(), COCO_EXCLUSIONS, name="halluremedy-coco")

    @classmethod
    def from_synonyms(cls, synonyms: Mapping[str, Sequence[str]]) -> ObjectVocabulary:
        """A vocabulary from a dataset's own table: class -> surface words (multi-word allowed)."""
        return cls(synonyms, {word: category for category, words in synonyms.items() for word in words},
                   name="dataset")

    def surface_forms(self, category: str) -> list[str]:
        """Every (singular) surface phrase that names ``category``, its own name included, sorted."""
        return sorted(" ".join(key) for key, c in self._table.items() if c == category)

    def lookup(self, phrase: str) -> str | None:
        """Class that a surface phrase names, or None (unknown, or a phrase that is dropped).

        Raises ValueError for a phrase with punctuation other than hyphens.
        """
        return self._table.get(_lemma_words(phrase))

    def extract_mentions(self, caption: str) -> list[Mention]:
        """Object mentions of ``caption`` in order, repeats included.

        Words are matched left to right, longest phrase first; a phrase may span hyphens
        (``"hot-dog"``) but no other punctuation.
        """
        tokens = tokenize(caption)
        # (token index, singular word) per word; None where punctuation breaks a phrase.
        words: list[tuple[int, str] | None] = []
        for index, token in enumerate(tokens):
            if is_word(token):
                words.append((index, singularize(token)))
            elif token != "-":
                words.append(None)
        mentions = []
        start = 0
        while start < len(words):
            for length in range(min(self._longest_phrase, len(words) - start), 0, -1):
                window = words[start:start + length]
                if None in window:
                    continue
                key = tuple(word for _, word in window)
                if key in self._table:
                    category = self._table[key]
                    if category is not None:
                        text = " ".join(tokens[index] for index, _ in window)
                        mentions.append(Mention(text, " ".join(key), category, window[0][0]))
                    start += length
                    break
            else:
                start += 1
        mentioned = {m.category for m in mentions}
        return [m for m in mentions if self.exclusions.get(m.lemma) not in mentioned]


def ground_truth_objects(image: CocoImage, vocab: MentionParser) -> set[str]:
    """Annotated categories of ``image`` united with the classes named in its reference captions.

    Raises ValueError when an annotated category is not a vocabulary class (the wrong vocabulary
    for this dataset).
    """
    unknown = image.categories - set(vocab.classes)
    if unknown:
        raise ValueError(f"image {image.image_id} is annotated with {sorted(unknown)}, which the vocabulary "
                         "does not know; use ObjectVocabulary.from_synonyms(ds.synonyms) for data that ships them")
    return image.categories | {m.category for caption in image.captions for m in vocab.extract_mentions(caption)}


@dataclass(frozen=True)
class CaptionChair:
    """CHAIR details of one caption: every mention, and those not in the image's ground truth."""

    image_id: int
    caption: str
    n_words: int
    ground_truth: tuple[str, ...]  # sorted
    mentions: tuple[Mention, ...]
    hallucinated: tuple[Mention, ...]


@dataclass(frozen=True)
class ChairResult:
    """CHAIR over a set of captions; rates are fractions in [0, 1].

    ``chair_i`` is 0.0 when no caption mentions any object, ``recall`` is 0.0 when no image has a
    ground-truth object (the counts beside them tell these cases apart). ``signature``: how the
    mentions were found (:func:`chair_signature`); compare numbers only across equal signatures.
    """

    signature: str
    chair_s: float
    chair_i: float
    recall: float
    mean_length: float
    n_captions: int
    n_hallucinated_captions: int
    n_mentions: int
    n_hallucinated_mentions: int
    n_ground_truth: int  # summed over images
    n_ground_truth_mentioned: int  # distinct per image, summed over images
    per_caption: tuple[CaptionChair, ...]

    def to_dict(self) -> dict:
        """Plain-JSON form (dicts, lists, numbers, strings)."""
        return asdict(self)


def chair(captions: Mapping[int, str], ground_truth: Mapping[int, set[str]], vocab: MentionParser) -> ChairResult:
    """Score generated ``captions`` (image id -> caption) against ``ground_truth`` (image id -> classes).

    Raises ValueError when there are no captions or a captioned image has no ground-truth entry.
    """
    if not captions:
        raise ValueError("chair: no captions to score")
    missing = [image_id for image_id in captions if image_id not in ground_truth]
    if missing:
        raise ValueError(f"chair: no ground truth for captioned image ids {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}")
    per_caption = []
    n_ground_truth = n_ground_truth_mentioned = 0
    for image_id, caption in captions.items():
        truth = ground_truth[image_id]
        mentions = tuple(vocab.extract_mentions(caption))
        per_caption.append(CaptionChair(
            image_id=image_id, caption=caption, n_words=len(caption.split()), ground_truth=tuple(sorted(truth)),
            mentions=mentions, hallucinated=tuple(m for m in mentions if m.category not in truth)))
        n_ground_truth += len(truth)
        n_ground_truth_mentioned += len(truth & {m.category for m in mentions})
    n_captions = len(per_caption)
    n_hallucinated_captions = sum(1 for c in per_caption if c.hallucinated)
    n_mentions = sum(len(c.mentions) for c in per_caption)
    n_hallucinated_mentions = sum(len(c.hallucinated) for c in per_caption)
    return ChairResult(
        signature=chair_signature(vocab),
        chair_s=n_hallucinated_captions / n_captions,
        chair_i=n_hallucinated_mentions / n_mentions if n_mentions else 0.0,
        recall=n_ground_truth_mentioned / n_ground_truth if n_ground_truth else 0.0,
        mean_length=sum(c.n_words for c in per_caption) / n_captions,
        n_captions=n_captions,
        n_hallucinated_captions=n_hallucinated_captions,
        n_mentions=n_mentions,
        n_hallucinated_mentions=n_hallucinated_mentions,
        n_ground_truth=n_ground_truth,
        n_ground_truth_mentioned=n_ground_truth_mentioned,
        per_caption=tuple(per_caption),
    )


def class_row(per_caption: Sequence[Mapping]) -> dict[str, float]:
    """Per-class CHAIR figures from ``ChairResult.to_dict()["per_caption"]``, flat as metric rows are:
    ``class/{c}/hallucinated``: mentions of class c in captions of images without it, per caption (a
    class the model over-names after training shows here first); ``class/{c}/recall``: share of the
    images holding c whose caption names it (no key for a class no image holds)."""
    if not per_caption:
        raise ValueError("class_row: no captions")
    hallucinated: dict[str, int] = {}
    held: dict[str, int] = {}
    named: dict[str, int] = {}
    for c in per_caption:
        for m in c["hallucinated"]:
            hallucinated[m["category"]] = hallucinated.get(m["category"], 0) + 1
        said = {m["category"] for m in c["mentions"]}
        for g in c["ground_truth"]:
            held[g] = held.get(g, 0) + 1
            named[g] = named.get(g, 0) + (g in said)
    row = {f"class/{k}/hallucinated": hallucinated.get(k, 0) / len(per_caption)
           for k in sorted(set(hallucinated) | set(held))}
    row.update({f"class/{k}/recall": named[k] / held[k] for k in sorted(held)})
    return row
