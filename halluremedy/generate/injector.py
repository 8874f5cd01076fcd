"""Rule-based hallucination injection: rewrite a faithful caption so it states one false thing.

POVID's dispreferred answers are ground-truth captions rewritten (by GPT-4V) to contain plausible
hallucinations of three kinds, keeping the style so the pair differs in the hallucination only.
:class:`RuleBasedEditor` does the same from the annotations and the caption text:

* ``"cooccur"``: an absent object that often co-occurs with a mentioned one (drawn with
  probability proportional to ``P(absent | mentioned)`` from :class:`CooccurrenceStats`), either
  *added* in the caption's own shape (a new list item in ``"a red bar and a small blue tile."``,
  a new relation sentence ``"a small purple hoop is below the red diamond."`` after a detailed
  caption, or ``"... next to a car and a bus."`` in free text) or *replacing* the mentioned
  object's noun (``"a plate with a knife."`` -> ``"a plate with a fork."``);
* ``"attribute"``: a colour or size word attached to a mentioned object becomes a value that no
  annotated object of that class has (``"a red bike"`` -> ``"a blue bike"``);
* ``"relation"``: a spatial phrase becomes its opposite (``"left of"`` <-> ``"right of"``,
  ``"above"`` <-> ``"below"``), when the flipped relation holds for no annotated pair.

Object mentions come from the CHAIR parser (:meth:`ObjectVocabulary.extract_mentions`); new object
nouns are the dataset's own surface words, so the edit reads like the ground truth and CHAIR
counts the added object as a hallucination. Every edit is checked before it is returned: the text
changed, and the objects CHAIR reads are the original ones (attribute and relation edits) or the
original ones plus the absent class (co-occurrence edits). A kind that is impossible for a caption
gives None, so the caller can fall back to another kind. All randomness comes from the
``numpy.random.Generator`` the caller passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from halluremedy.data.coco import CocoDataset, CocoImage, CocoObject
from halluremedy.data.scenes.captions import plural
from halluremedy.eval.chair import Mention, ObjectVocabulary, ground_truth_objects
from halluremedy.eval.coco_synonyms import COCO_CLASSES
from halluremedy.eval.text import is_word, tokenize
from halluremedy.generate.cooccurrence import CooccurrenceStats
from halluremedy.prompts import article

__all__ = [
    "COCO_COLOR_WORDS",
    "COCO_SIZE_WORDS",
    "COCO_SURFACE_WORDS",
    "COOCCUR_MODES",
    "EDIT_KINDS",
    "RELATION_FLIPS",
    "RELATION_GEOMETRY",
    "AttributeWords",
    "CaptionEditor",
    "CooccurMode",
    "EditKind",
    "EditLexicon",
    "RuleBasedEditor",
]

EditKind = Literal["cooccur", "attribute", "relation"]
EDIT_KINDS: tuple[EditKind, ...] = ("cooccur", "attribute", "relation")
CooccurMode = Literal["add", "replace"]
COOCCUR_MODES: tuple[CooccurMode, ...] = ("add", "replace")


class CaptionEditor(Protocol):
    """Rewrites a faithful caption of an image to contain one hallucination of a given kind."""

    name: str  # "rule", "llm": the prefix of PreferenceRecord.source

    def edit(self, image: CocoImage, caption: str, kind: EditKind, rng: np.random.Generator) -> str | None:
        """The edited caption, or None when ``kind`` is impossible for this caption."""
        ...


@dataclass(frozen=True)
class AttributeWords:
    """Caption words of one annotated attribute: ``words[surface word] = annotation value``.

    Edits write a value with the first word listed for it.
    """

    attribute: str  # the annotation key, e.g. "color"
    words: Mapping[str, str]

    @property
    def values(self) -> tuple[str, ...]:
        """Distinct annotation values, in the order first listed."""
        return tuple(dict.fromkeys(self.words.values()))

    def word_for(self, value: str) -> str:
        """The word edits write for ``value``."""
        return next(word for word, v in self.words.items() if v == value)


COCO_COLOR_WORDS = AttributeWords("color", {
    "red": "red", "orange": "orange", "yellow": "yellow", "green": "green", "blue": "blue", "purple": "purple",
    "pink": "pink", "brown": "brown", "black": "black", "white": "white", "gray": "gray", "grey": "gray",
})
COCO_SIZE_WORDS = AttributeWords("size", {
    "small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large", "huge": "large",
})

# Spatial phrase -> the phrase an edit writes instead.
RELATION_FLIPS: dict[str, str] = {
    "to the left of": "to the right of", "to the right of": "to the left of",
    "on the left of": "on the right of", "on the right of": "on the left of",
    "left of": "right of", "right of": "left of",
    "above": "below", "below": "above",
    "on top of": "underneath", "underneath": "on top of", "beneath": "above",
    "in front of": "behind", "behind": "in front of",
}
# Spatial phrase -> what it says about box centres ("left": the subject's centre has the smaller x).
# Phrases without an entry (in front of, behind) cannot be checked against boxes.
RELATION_GEOMETRY: dict[str, str] = {
    "to the left of": "left", "on the left of": "left", "left of": "left",
    "to the right of": "right", "on the right of": "right", "right of": "right",
    "above": "above", "on top of": "above", "below": "below", "underneath": "below", "beneath": "below",
}

# Words the editor writes for a COCO class: its own name, except where a caption would say it otherwise.
COCO_SURFACE_WORDS: dict[str, tuple[str, ...]] = {
    **{c: (c,) for c in COCO_CLASSES},
    "dining table": ("table",), "tv": ("television",), "sports ball": ("ball",), "skis": ("skis",),
}
# Plurals that English spells otherwise than plural() (used when a plural noun is replaced).
_IRREGULAR_PLURALS = {"knife": "knives", "person": "people", "mouse": "mice", "sheep": "sheep", "skis": "skis",
                      "scissors": "scissors"}

_DETERMINERS = frozenset({"a", "an", "the", "one", "two", "three", "four", "five", "six", "seven", "eight",
                          "nine", "ten", "some", "several", "many", "another", "this", "that", "these", "those",
                          "his", "her", "its", "their"})
_SENTENCE_ENDS = frozenset({".", "!", "?", ";"})
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})  # as tokenize() reads them


@dataclass(frozen=True)
class EditLexicon:
    """The words attribute and relation edits read and write."""

    attributes: tuple[AttributeWords, ...] = (COCO_COLOR_WORDS, COCO_SIZE_WORDS)
    relation_flips: Mapping[str, str] = field(default_factory=lambda: dict(RELATION_FLIPS))
    relation_geometry: Mapping[str, str] = field(default_factory=lambda: dict(RELATION_GEOMETRY))

    @classmethod
    def for_dataset(cls, dataset: CocoDataset) -> EditLexicon:
        """Colour and size words from the values the dataset annotates (each value is its own word,
        e.g. the scene world's palette), the COCO word lists for an attribute it does not annotate."""
        groups = []
        for default in (COCO_COLOR_WORDS, COCO_SIZE_WORDS):
            values = sorted({o.attributes[default.attribute] for im in dataset.images for o in im.objects
                             if default.attribute in o.attributes})
            groups.append(AttributeWords(default.attribute, {v: v for v in values}) if values else default)
        return cls(attributes=tuple(groups))

    def attribute_of(self, word: str) -> tuple[AttributeWords, str] | None:
        """The attribute group a caption word belongs to, with its annotation value."""
        for group in self.attributes:
            if word in group.words:
                return group, group.words[word]
        return None


@dataclass(frozen=True)
class _Token:
    text: str  # lowercase, as tokenize() gives it
    start: int  # character offsets in the caption
    end: int


@dataclass(frozen=True)
class _Modifier:
    token: int  # index into the caption's tokens
    group: AttributeWords
    value: str


@dataclass(frozen=True)
class _NounPhrase:
    """A mention with the determiner and attribute words right before it: ``a small red circle``."""

    mention: Mention
    determiner: int | None  # token index
    modifiers: tuple[_Modifier, ...]  # in caption order
    noun_start: int  # token indices of the mention's words, end exclusive
    noun_end: int

    @property
    def category(self) -> str:
        return self.mention.category

    @property
    def start(self) -> int:
        if self.determiner is not None:
            return self.determiner
        return self.modifiers[0].token if self.modifiers else self.noun_start

    @property
    def is_plural(self) -> bool:
        return self.mention.text != self.mention.lemma

    @property
    def description(self) -> dict[str, str]:
        """Attribute -> value as the caption states it."""
        return {m.group.attribute: m.value for m in self.modifiers}


@dataclass(frozen=True)
class _Relation:
    """A spatial phrase occurrence; ``subject``/``object`` index the phrases around it in its sentence."""

    phrase: str
    start: int  # token indices, end exclusive
    end: int
    subject: int | None
    object: int | None


class _ParsedCaption:
    """A caption's tokens (with character offsets), noun phrases and relation phrases."""

    def __init__(self, text: str, tokens: list[_Token], phrases: list[_NounPhrase], relations: list[_Relation]):
        self.text = text
        self.tokens = tokens
        self.phrases = phrases
        self.relations = relations

    @classmethod
    def parse(cls, caption: str, vocab: ObjectVocabulary, lexicon: EditLexicon) -> _ParsedCaption | None:
        """None when the caption's tokens cannot be located in it (e.g. lowercasing changed its length)."""
        lowered = caption.lower().translate(_APOSTROPHES)
        if len(lowered) != len(caption):
            return None
        tokens, position = [], 0
        for text in tokenize(caption):
            start = lowered.find(text, position)
            if start < 0:
                return None
            tokens.append(_Token(text, start, start + len(text)))
            position = start + len(text)
        phrases = [cls._noun_phrase(tokens, m, lexicon) for m in vocab.extract_mentions(caption)]
        return cls(caption, tokens, phrases, cls._relations(tokens, phrases, lexicon))

    @staticmethod
    def _noun_phrase(tokens: list[_Token], mention: Mention, lexicon: EditLexicon) -> _NounPhrase:
        end, words = mention.token_index, 0
        while words < len(mention.lemma.split()):
            words += is_word(tokens[end].text)
            end += 1
        modifiers = []
        j = mention.token_index - 1
        while j >= 0 and (found := lexicon.attribute_of(tokens[j].text)) is not None:
            modifiers.insert(0, _Modifier(j, *found))
            j -= 1
        determiner = j if j >= 0 and tokens[j].text in _DETERMINERS else None
        return _NounPhrase(mention, determiner, tuple(modifiers), mention.token_index, end)

    @staticmethod
    def _relations(tokens: list[_Token], phrases: list[_NounPhrase], lexicon: EditLexicon) -> list[_Relation]:
        """Spatial phrases, matched left to right, longest first; each with the nearest noun phrase
        before it and after it in the same sentence."""
        by_length = sorted(lexicon.relation_flips, key=lambda p: -len(p.split()))
        sentence_of, sentence = [], 0
        for token in tokens:
            sentence_of.append(sentence)
            sentence += token.text in _SENTENCE_ENDS
        found, i = [], 0
        while i < len(tokens):
            for phrase in by_length:
                words = phrase.split()
                if [t.text for t in tokens[i:i + len(words)]] == words:
                    end = i + len(words)
                    before = [k for k, p in enumerate(phrases) if p.noun_end <= i and sentence_of[p.start] == sentence_of[i]]
                    after = [k for k, p in enumerate(phrases) if p.start >= end and sentence_of[p.start] == sentence_of[i]]
                    found.append(_Relation(phrase, i, end, before[-1] if before else None, after[0] if after else None))
                    i = end
                    break
            else:
                i += 1
        return found

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Character span of tokens ``start .. end - 1``."""
        return self.tokens[start].start, self.tokens[end - 1].end

    def is_back_reference(self, index: int) -> bool:
        """``the red circle`` after ``a large red circle``: a definite phrase whose noun came before."""
        phrase = self.phrases[index]
        return (phrase.determiner is not None and self.tokens[phrase.determiner].text == "the"
                and any(p.mention.text == phrase.mention.text for p in self.phrases[:index]))

    def back_references(self, index: int) -> list[int]:
        """Later ``the ...`` phrases naming the same thing as phrase ``index``: same noun, and
        attribute words that phrase ``index`` also states."""
        phrase = self.phrases[index]
        stated = set(phrase.description.items())
        return [k for k in range(index + 1, len(self.phrases))
                if self.is_back_reference(k) and self.phrases[k].mention.text == phrase.mention.text
                and set(self.phrases[k].description.items()) <= stated]

    def categories(self) -> list[str]:
        return [p.category for p in self.phrases]


def _like(original: str, new: str) -> str:
    """``new`` with ``original``'s capitalisation of the first letter."""
    return new[:1].upper() + new[1:] if original[:1].isupper() else new


def _splice(text: str, replacements: list[tuple[int, int, str]]) -> str:
    """Apply non-overlapping ``(char start, char end, new text)`` replacements."""
    for start, end, new in sorted(replacements, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _plural(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    if last in _IRREGULAR_PLURALS:
        return f"{head} {_IRREGULAR_PLURALS[last]}" if head else _IRREGULAR_PLURALS[last]
    return plural(noun)


def _center(obj: CocoObject) -> tuple[float, float]:
    x, y, w, h = obj.bbox
    return x + w / 2, y + h / 2


def _holds(geometry: str, a: CocoObject, b: CocoObject) -> bool:
    """Whether "a <geometry> b" is true of the box centres at all (no margin; image y grows down)."""
    (ax, ay), (bx, by) = _center(a), _center(b)
    return {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[geometry]


def _matches(obj: CocoObject, description: Mapping[str, str]) -> bool:
    """Whether the object fits every stated attribute that it is annotated with."""
    return all(obj.attributes.get(attribute, value) == value for attribute, value in description.items())


class RuleBasedEditor:
    """Hallucination injection from annotations and caption text (see the module docstring).

    ``surface_words[c]``: the words new mentions of class ``c`` use (one drawn at random); each must
    parse as ``c``. ``cooccur_modes``: which co-occurrence edits to try, in random order per caption.
    """

    name = "rule"

    def __init__(self, vocabulary: ObjectVocabulary, cooccurrence: CooccurrenceStats, *,
                 surface_words: Mapping[str, Sequence[str]], lexicon: EditLexicon = EditLexicon(),
                 cooccur_modes: Sequence[CooccurMode] = COOCCUR_MODES) -> None:
        for category, words in surface_words.items():
            for word in words:
                if vocabulary.lookup(word) != category:
                    raise ValueError(f"surface word {word!r} of {category!r} parses as {vocabulary.lookup(word)!r}")
        if unknown := set(cooccur_modes) - set(COOCCUR_MODES):
            raise ValueError(f"unknown cooccur modes {sorted(unknown)}; known: {list(COOCCUR_MODES)}")
        if not cooccur_modes:
            raise ValueError("cooccur_modes must not be empty")
        self.vocabulary = vocabulary
        self.cooccurrence = cooccurrence
        self.surface_words = {c: tuple(words) for c, words in surface_words.items() if words}
        self.lexicon = lexicon
        self.cooccur_modes = tuple(cooccur_modes)

    @classmethod
    def for_dataset(cls, dataset: CocoDataset, *,
                    cooccur_modes: Sequence[CooccurMode] = COOCCUR_MODES) -> RuleBasedEditor:
        """An editor speaking the dataset's words: its synonym table (or the COCO vocabulary and
        :data:`COCO_SURFACE_WORDS`), its annotated colour/size values, its co-occurrence counts."""
        if dataset.synonyms:
            vocabulary, surface_words = ObjectVocabulary.from_synonyms(dataset.synonyms), dataset.synonyms
        else:
            vocabulary, surface_words = ObjectVocabulary.coco(), COCO_SURFACE_WORDS
        return cls(vocabulary, CooccurrenceStats.from_dataset(dataset), surface_words=surface_words,
                   lexicon=EditLexicon.for_dataset(dataset), cooccur_modes=cooccur_modes)

    def edit(self, image: CocoImage, caption: str, kind: EditKind, rng: np.random.Generator) -> str | None:
        """``caption`` with one hallucination of ``kind`` about ``image``, or None if none fits."""
        if kind not in EDIT_KINDS:
            raise ValueError(f"unknown edit kind {kind!r}; known: {list(EDIT_KINDS)}")
        parsed = _ParsedCaption.parse(caption, self.vocabulary, self.lexicon)
        if parsed is None:
            return None
        if kind == "cooccur":
            return self._cooccur(parsed, image, rng)
        if kind == "attribute":
            return self._attribute(parsed, image, rng)
        return self._relation(parsed, image, rng)

    # --- co-occurring absent objects -------------------------------------------------------------

    def _cooccur(self, parsed: _ParsedCaption, image: CocoImage, rng: np.random.Generator) -> str | None:
        truth = ground_truth_objects(image, self.vocabulary)
        absent = set(self.surface_words) - truth - set(parsed.categories())
        anchors = [k for k, p in enumerate(parsed.phrases)
                   if p.category in image.categories and not parsed.is_back_reference(k)]
        for mode in (self.cooccur_modes[i] for i in rng.permutation(len(self.cooccur_modes))):
            add = mode == "add"
            candidates = self._insertion_anchors(parsed, anchors) if add else anchors
            for anchor in (candidates[i] for i in rng.permutation(len(candidates))):
                added = self.cooccurrence.sample_partner(parsed.phrases[anchor].category, absent, rng)
                if added is None:
                    continue
                words = self.surface_words[added]
                noun = words[rng.integers(len(words))]
                edited = (self._add_object(parsed, image, anchor, noun, rng) if add
                          else self._replace_object(parsed, anchor, noun))
                if edited is not None and self._is_added_hallucination(parsed, edited, added, truth):
                    return edited
        return None

    def _insertion_anchors(self, parsed: _ParsedCaption, anchors: list[int]) -> list[int]:
        """Anchors an added object can go with: any, for a list caption or one with a relation
        phrase (a new item / sentence); otherwise those ending a clause (``... next to a car.``)."""
        if self._list_items(parsed) is not None or parsed.relations:
            return anchors
        tokens = parsed.tokens
        return [k for k in anchors if parsed.phrases[k].noun_end == len(tokens)
                or tokens[parsed.phrases[k].noun_end].text in _SENTENCE_ENDS | {","}]

    @staticmethod
    def _new_phrase(parsed: _ParsedCaption, image: CocoImage, anchor: int, noun: str,
                    rng: np.random.Generator) -> str:
        """``a small purple hoop``: an article, then a word for each attribute that the anchor
        states and the annotations record (captions of such data describe every object that way;
        COCO's do not, so a new COCO object gets no colour), drawn from the caption's own words for
        that attribute (a short scene caption only ever writes "small", so an added object is never
        "large" there), then ``noun``."""
        annotated = {a for o in image.objects for a in o.attributes}
        adjectives = []
        for group in (m.group for m in parsed.phrases[anchor].modifiers if m.group.attribute in annotated):
            written = sorted({parsed.tokens[m.token].text for p in parsed.phrases for m in p.modifiers
                              if m.group is group})
            adjectives.append(written[rng.integers(len(written))])
        words = " ".join([*adjectives, noun])
        return f"{article(words)} {words}"

    def _add_object(self, parsed: _ParsedCaption, image: CocoImage, anchor: int, noun: str,
                    rng: np.random.Generator) -> str:
        """The caption with a new phrase for ``noun``: a list item, a relation sentence or ``and ...``."""
        new = self._new_phrase(parsed, image, anchor, noun, rng)
        text, tokens = parsed.text, parsed.tokens
        items = self._list_items(parsed)
        if items is not None:  # "a, b and c." -> "a, b, NEW and c."
            texts = [text[slice(*parsed.span(parsed.phrases[k].start, parsed.phrases[k].noun_end))] for k in items]
            texts.insert(1 + int(rng.integers(len(texts))), new)
            first, last = parsed.phrases[items[0]], parsed.phrases[items[-1]]
            oxford = len(items) > 2 and tokens[last.start - 2].text == ","
            body = ", ".join(texts[:-1]) + ("," if oxford else "") + " and " + texts[-1]
            return text[:parsed.span(first.start, first.noun_end)[0]] + body + text[parsed.span(last.start, last.noun_end)[1]:]
        phrase = parsed.phrases[anchor]
        if parsed.relations:  # a new sentence: "a small purple hoop is below the red diamond."
            used = sorted({r.phrase for r in parsed.relations} | {self.lexicon.relation_flips[r.phrase]
                                                                  for r in parsed.relations})
            colour = [text[slice(*parsed.span(m.token, m.token + 1))] for m in phrase.modifiers
                      if m.group.attribute == "color"]
            reference = " ".join(["the", *colour, text[slice(*parsed.span(phrase.noun_start, phrase.noun_end))]])
            sentence = f"{_like(text, new)} is {used[rng.integers(len(used))]} {reference}."
            body = text.rstrip()
            return f"{body} {sentence}" if body[-1:] in _SENTENCE_ENDS else f"{body}. {sentence}"
        end = parsed.span(phrase.noun_start, phrase.noun_end)[1]  # "... next to a car and a bus."
        return f"{text[:end]} and {new}{text[end:]}"

    def _replace_object(self, parsed: _ParsedCaption, anchor: int, noun: str) -> str:
        """The anchor's noun, and those of its back-references, become ``noun`` (knife -> fork)."""
        replacements = []
        for k in (anchor, *parsed.back_references(anchor)):
            phrase = parsed.phrases[k]
            start, end = parsed.span(phrase.noun_start, phrase.noun_end)
            new = _plural(noun) if phrase.is_plural else noun
            replacements.append((start, end, _like(parsed.text[start:end], new)))
            if phrase.determiner is not None and not phrase.modifiers:
                replacements.extend(self._article_fix(parsed, phrase.determiner, new))
        return _splice(parsed.text, replacements)

    def _list_items(self, parsed: _ParsedCaption) -> list[int] | None:
        """Phrase indices when the caption is only a list of noun phrases joined by ``,``/``and``
        (``"two red circles, a small blue square and a green star."``), else None."""
        tokens = parsed.tokens
        n = len(tokens) - (1 if tokens and tokens[-1].text in _SENTENCE_ENDS else 0)
        items, position = [], 0
        for k, phrase in enumerate(parsed.phrases):
            if phrase.start != position:
                return None
            items.append(k)
            position = phrase.noun_end
            while position < n and tokens[position].text in {",", "and"}:
                position += 1
        return items if items and position == n else None

    def _is_added_hallucination(self, parsed: _ParsedCaption, edited: str, added: str, truth: set[str]) -> bool:
        """The edit names ``added`` (absent from the image) and no other class the caption lacked."""
        categories = {m.category for m in self.vocabulary.extract_mentions(edited)}
        return (edited != parsed.text and added in categories and added not in truth
                and categories <= set(parsed.categories()) | {added})

    # --- attributes ------------------------------------------------------------------------------

    def _attribute(self, parsed: _ParsedCaption, image: CocoImage, rng: np.random.Generator) -> str | None:
        slots = [(k, m) for k, p in enumerate(parsed.phrases)
                 if p.category in image.categories and not parsed.is_back_reference(k)
                 for m in range(len(p.modifiers))]
        for k, m in (slots[i] for i in rng.permutation(len(slots))):
            phrase = parsed.phrases[k]
            modifier = phrase.modifiers[m]
            wrong = self._wrong_values(image, phrase, modifier)
            if not wrong:
                continue
            value = wrong[rng.integers(len(wrong))]
            word = modifier.group.word_for(value)
            replacements = []
            for ref in (k, *parsed.back_references(k)):
                ref_phrase = parsed.phrases[ref]
                for ref_modifier in ref_phrase.modifiers:
                    if ref_modifier.group is modifier.group:
                        start, end = parsed.span(ref_modifier.token, ref_modifier.token + 1)
                        replacements.append((start, end, _like(parsed.text[start:end], word)))
                        if ref_phrase.determiner == ref_modifier.token - 1:
                            replacements.extend(self._article_fix(parsed, ref_phrase.determiner, word))
            edited = _splice(parsed.text, replacements)
            if edited != parsed.text and self._same_objects(parsed, edited):
                return edited
        return None

    def _wrong_values(self, image: CocoImage, phrase: _NounPhrase, modifier: _Modifier) -> list[str]:
        """Values of the modifier's attribute that make the phrase describe no annotated object of
        its class. When no object of the class annotates that attribute, every other value counts
        (the caption is the only ground truth for it)."""
        attribute = modifier.group.attribute
        objects = [o for o in image.objects if o.category == phrase.category]
        checkable = any(attribute in o.attributes for o in objects)
        wrong = []
        for value in modifier.group.values:
            if value == modifier.value:
                continue
            described = {**phrase.description, attribute: value}
            if not checkable or not any(_matches(o, described) for o in objects):
                wrong.append(value)
        return wrong

    # --- relations -------------------------------------------------------------------------------

    def _relation(self, parsed: _ParsedCaption, image: CocoImage, rng: np.random.Generator) -> str | None:
        for relation in (parsed.relations[i] for i in rng.permutation(len(parsed.relations))):
            flipped = self.lexicon.relation_flips[relation.phrase]
            if not self._flip_is_false(parsed, image, relation, flipped):
                continue
            start, end = parsed.span(relation.start, relation.end)
            edited = _splice(parsed.text, [(start, end, _like(parsed.text[start:end], flipped))])
            if edited != parsed.text and self._same_objects(parsed, edited):
                return edited
        return None

    def _flip_is_false(self, parsed: _ParsedCaption, image: CocoImage, relation: _Relation, flipped: str) -> bool:
        """With a subject and an object around the phrase, both must be annotated classes and the
        flipped relation must hold for no pair of their annotated objects (when it has a geometry).
        Without them (free text) the flip is taken as false: the caption is the ground truth."""
        if relation.subject is None or relation.object is None:
            return True
        subject, obj = parsed.phrases[relation.subject], parsed.phrases[relation.object]
        if subject.category not in image.categories or obj.category not in image.categories:
            return False
        geometry = self.lexicon.relation_geometry.get(flipped)
        if geometry is None:
            return True
        return not any(_holds(geometry, a, b) for a in self._referents(image, subject)
                       for b in self._referents(image, obj) if a is not b)

    @staticmethod
    def _referents(image: CocoImage, phrase: _NounPhrase) -> list[CocoObject]:
        """Annotated objects the phrase may name: its class, filtered by its stated attributes when
        any object fits them."""
        objects = [o for o in image.objects if o.category == phrase.category]
        fitting = [o for o in objects if _matches(o, phrase.description)]
        return fitting or objects

    # --- shared ----------------------------------------------------------------------------------

    @staticmethod
    def _article_fix(parsed: _ParsedCaption, determiner: int, next_word: str) -> list[tuple[int, int, str]]:
        """Replace an ``a``/``an`` determiner by the article ``next_word`` takes."""
        token = parsed.tokens[determiner]
        if token.text not in {"a", "an"}:
            return []
        original = parsed.text[token.start:token.end]
        return [(token.start, token.end, _like(original, article(next_word)))]

    def _same_objects(self, parsed: _ParsedCaption, edited: str) -> bool:
        """CHAIR reads the same classes, in the same order, from the edit as from the original."""
        return [m.category for m in self.vocabulary.extract_mentions(edited)] == parsed.categories()
