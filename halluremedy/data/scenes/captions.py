"""Reference captions of scenes, in two styles, with optional co-occurrence noise.

Styles (all lowercase, punctuation a separate word):
  * ``short``: every object, repeated ones counted, size named only when small:
    ``"two red circles, a small blue square and a green star."``
  * ``detailed``: every object with size and colour, chained by relations:
    ``"there is a large red circle to the left of a small blue square. a large green star is above
    the blue square."``

Each mention picks one of the class's synonyms (``SYNONYMS``) at random, so evaluation must parse
synonyms and plurals as CHAIR does.

Noise: a noisy caption also mentions a *phantom*, the absent partner of a present trigger class
(a star without a crescent: "... and a yellow moon."), phrased in the caption's style. This is the
language prior real human captions carry and a preference method can unlearn. A second kind,
``extra_noise``, adds a plausible last sentence after the listed objects naming an absent class
(any, partner or not: "... there is also a small red star."), as long instruction captions invent
details. ``noise_styles`` restricts both kinds to some caption styles (LLaVA-style detailed captions
carry the prior, short alignment captions need not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from halluremedy.data.scenes.world import (
    COLORS,
    CONTRASTS,
    DETAILED_ORDERS,
    RELATIONS,
    SIZES,
    STYLES,
    SYNONYMS,
    Scene,
    SceneConfig,
    relation_between,
)
from halluremedy.prompts import article

__all__ = ["NUMBER_WORDS", "Phantom", "Caption", "plural", "sample_phantom", "caption_scene",
           "make_captions", "scene_text_vocabulary"]

NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                                9: "nine"}
_RELATION_PHRASES: dict[str, str] = {"left of": "to the left of", "right of": "to the right of",
                                     "above": "above", "below": "below"}
_FUNCTION_WORDS: tuple[str, ...] = ("a", "an", "and", "there", "is", "also", "the", ",", ".")


@dataclass(frozen=True)
class Phantom:
    """An absent object a noisy caption mentions: the partner of the present object ``anchor``."""

    category: str
    color: str
    size: str
    anchor: int  # index into scene.objects


@dataclass(frozen=True)
class Caption:
    """One reference caption; ``phantom`` is set when it is a noisy one."""

    text: str
    style: str
    phantom: Phantom | None = None


def plural(noun: str) -> str:
    """English plural of a (possibly multi-word) class noun: the last word is inflected."""
    head, _, last = noun.rpartition(" ")
    last = last + "es" if last.endswith(("s", "x", "ch", "sh")) else last + "s"
    return f"{head} {last}" if head else last


def sample_phantom(scene: Scene, cfg: SceneConfig, rng: np.random.Generator) -> Phantom | None:
    """A random absent partner of a present trigger, with random colour and size; None if every
    present trigger's partner is present too."""
    present = {o.category for o in scene.objects}
    partner_of = cfg.partner_of
    candidates = [(i, partner_of[o.category]) for i, o in enumerate(scene.objects)
                  if o.category in partner_of and partner_of[o.category] not in present]
    if not candidates:
        return None
    anchor, category = candidates[rng.integers(len(candidates))]
    return Phantom(category, cfg.colors[rng.integers(len(cfg.colors))], SIZES[rng.integers(len(SIZES))], anchor)


def _noun(category: str, rng: np.random.Generator) -> str:
    synonyms = SYNONYMS[category]
    return synonyms[rng.integers(len(synonyms))]


def _join(phrases: list[str]) -> str:
    """"x", "x and y", "x, y and z"."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _short(scene: Scene, rng: np.random.Generator, phantom: Phantom | None) -> str:
    """Identical-looking objects counted together, in random order; the phantom at a random place."""
    groups: dict[tuple[str, str, bool], int] = {}  # (category, colour, is small) -> count
    for obj in scene.objects:
        key = (obj.category, obj.color, obj.size == "small")
        groups[key] = groups.get(key, 0) + 1
    items = list(groups.items())
    order = [items[k] for k in rng.permutation(len(items))]
    if phantom is not None:
        order.insert(int(rng.integers(len(order) + 1)), ((phantom.category, phantom.color, phantom.size == "small"), 1))
    phrases = []
    for (category, color, small), count in order:
        noun = _noun(category, rng)
        adjectives = f"small {color}" if small else color
        if count == 1:
            phrases.append(f"{article(adjectives)} {adjectives} {noun}")
        else:
            phrases.append(f"{NUMBER_WORDS[count]} {adjectives} {plural(noun)}")
    return _join(phrases) + "."


def _detailed(scene: Scene, rng: np.random.Generator, margin: float, phantom: Phantom | None,
              order_by: str = "random") -> str:
    """Objects in ``order_by`` order ("random", or "reading": left to right by centre, then top to
    bottom), each related to the one before; the phantom in a last sentence."""
    objects = scene.objects
    nouns = [_noun(o.category, rng) for o in objects]

    def phrase(i: int) -> str:
        words = f"{objects[i].size} {objects[i].color} {nouns[i]}"
        return f"{article(words)} {words}"

    def relation(i: int, j: int) -> str | None:
        rel = relation_between(objects[i], objects[j], scene.image_size, margin)
        return _RELATION_PHRASES[rel] if rel else None

    order = [int(k) for k in rng.permutation(len(objects))]  # drawn either way: the stream stays the same
    if order_by == "reading":
        order = sorted(range(len(objects)), key=lambda k: (objects[k].center[0], objects[k].center[1]))
    first = order[0]
    if len(order) == 1:
        sentences = [f"there is {phrase(first)}."]
    else:
        second = order[1]
        rel = relation(first, second)
        sentences = [f"there is {phrase(first)} {rel or 'and'} {phrase(second)}."]
    for prev, cur in zip(order[1:], order[2:], strict=False):
        rel = relation(cur, prev)
        sentences.append(f"{phrase(cur)} is {rel} the {objects[prev].color} {nouns[prev]}." if rel
                         else f"there is also {phrase(cur)}.")
    if phantom is not None:
        words = f"{phantom.size} {phantom.color} {_noun(phantom.category, rng)}"
        rel = _RELATION_PHRASES[RELATIONS[rng.integers(len(RELATIONS))]]
        anchor = phantom.anchor
        sentences.append(f"{article(words)} {words} is {rel} the {objects[anchor].color} {nouns[anchor]}.")
    return " ".join(sentences)


def caption_scene(scene: Scene, style: str, rng: np.random.Generator, *, margin: float = 0.15,
                  phantom: Phantom | None = None, detailed_order: str = "random") -> str:
    """One caption of ``scene`` in ``style`` ("short" or "detailed"); with ``phantom`` it also
    mentions that absent object. ``margin`` is the relation margin (see ``relations``);
    ``detailed_order`` the order a detailed caption names the objects in (``DETAILED_ORDERS``)."""
    if detailed_order not in DETAILED_ORDERS:
        raise ValueError(f"unknown detailed_order {detailed_order!r}; known: {list(DETAILED_ORDERS)}")
    if not scene.objects:
        raise ValueError("cannot caption a scene without objects")
    if style == "short":
        return _short(scene, rng, phantom)
    if style == "detailed":
        return _detailed(scene, rng, margin, phantom, detailed_order)
    raise ValueError(f"unknown caption style {style!r}; known: {list(STYLES)}")


def _extra_sentence(scene: Scene, cfg: SceneConfig, style: str, rng: np.random.Generator, text: str,
                    phantom: Phantom | None) -> tuple[str, Phantom | None]:
    """``text`` with one more object of an absent class (uniform) after the listed ones."""
    present = {o.category for o in scene.objects} | ({phantom.category} if phantom else set())
    absent = [c for c in cfg.classes if c not in present]
    if not absent:
        return text, None
    category = absent[rng.integers(len(absent))]
    color, size = cfg.colors[rng.integers(len(cfg.colors))], SIZES[rng.integers(len(SIZES))]
    noun = _noun(category, rng)
    if style == "detailed":
        words = f"{size} {color} {noun}"
        text = f"{text} there is also {article(words)} {words}."
    else:
        adjectives = f"small {color}" if size == "small" else color
        text = f"{text[:-1]} and {article(adjectives)} {adjectives} {noun}."
    return text, Phantom(category, color, size, -1)


def make_captions(scene: Scene, cfg: SceneConfig, rng: np.random.Generator, n: int,
                  caption_noise: float = 0.0, *, extra_noise: float = 0.0,
                  noise_styles: tuple[str, ...] = STYLES) -> list[Caption]:
    """``n`` captions; caption k has style ``cfg.caption_styles[k % len(cfg.caption_styles)]``.

    Each caption of a scene that has a present trigger with an absent partner is, with
    probability ``caption_noise``, made noisy (it mentions such a partner); captions of other
    scenes cannot be. So ``caption_noise`` is the share of *eligible* captions that are noisy.
    With probability ``extra_noise`` a caption also ends with one more object of an absent class
    (its ``phantom`` is then that one, ``anchor=-1``, when the caption had none). Noise of either
    kind goes only into captions whose style is in ``noise_styles``. With ``extra_noise=0`` and
    every style noisy, the random stream is the one earlier versions drew; ``cfg.detailed_order``
    leaves the stream as it is.
    """
    if not 0.0 <= caption_noise <= 1.0 or not 0.0 <= extra_noise <= 1.0:
        raise ValueError(f"caption_noise={caption_noise!r} and extra_noise={extra_noise!r} must lie in [0, 1]")
    captions = []
    for k in range(n):
        style = cfg.caption_styles[k % len(cfg.caption_styles)]
        noisy = style in noise_styles
        phantom = sample_phantom(scene, cfg, rng) if rng.random() < caption_noise and noisy else None
        text = caption_scene(scene, style, rng, margin=cfg.relation_margin, phantom=phantom,
                             detailed_order=cfg.detailed_order)
        if extra_noise and rng.random() < extra_noise and noisy:
            text, extra = _extra_sentence(scene, cfg, style, rng, text, phantom)
            phantom = phantom or extra
        captions.append(Caption(text, style, phantom))
    return captions


def scene_text_vocabulary() -> list[str]:
    """Every word any scene text can contain, under any ``SceneConfig``, sorted: caption words of
    every style, class names, synonyms and their plurals, colours, sizes, contrasts, relation and
    number words, and the punctuation "," and "." as words of their own."""
    words = set(_FUNCTION_WORDS) | set(NUMBER_WORDS.values()) | set(SIZES) | set(CONTRASTS) | set(COLORS)
    for phrase in _RELATION_PHRASES.values():
        words.update(phrase.split())
    for category in SYNONYMS:
        for noun in SYNONYMS[category]:
            words.update(noun.split())
            words.update(plural(noun).split())
    return sorted(words)
