"""CHAIR's mention parser exactly as the original code computes it (``compat="reference"``).

Rohrbach et al. (2018) published CHAIR as ``utils/chair.py`` + ``data/synonyms.txt`` (the
LisaAnne/Hallucination repository); published tables (POVID's CHAIR_s 66.8 -> 31.8 for
LLaVA-1.5, ...) come from that code. This module re-implements its ``caption_to_words``, from its
published description and behaviour, without its dependencies (nltk, pattern):

1. lowercase; split sentences on ``[.!?]`` followed by whitespace (the offline stand-in for
   punkt that the conformance cases use), then the Treebank word tokenizer
   (:func:`treebank_tokenize`; nltk's ``word_tokenize``): the sentence-final period, commas,
   quotes, brackets and clitics (``'s``, ``n't``) are split off; hyphens and inner periods are not;
2. pattern.en's ``singularize`` on every token (:func:`pattern_singularize`), bugs included:
   ``bus -> bu`` (so a singular bus is never counted), ``ties -> ty``, ``glass -> glas``;
3. two-word phrases merged left to right from a fixed list (:func:`double_words`), some mapped
   to another word (``baby dog -> dog``, ``passenger jet -> jet``, ``bow tie -> tie``,
   ``toilet seat -> toilet``, ``wine glas -> wine glass``); three-word entries never match;
4. if both ``toilet`` and ``seat`` remain, every ``seat`` is dropped;
5. words kept only when they are an entry of the synonym list (:data:`LISAANNE_2018_SYNONYMS`,
   parsed as the original parses it: so ``" motor bike"``, ``" cheesecake"`` and ``"iPhone"``
   can never match), then mapped to their line's first word, the COCO class.

:class:`ReferenceVocabulary` has the ``classes`` / ``extract_mentions`` / ``signature``
interface of :class:`~halluremedy.eval.chair.ObjectVocabulary`, so :func:`~halluremedy.eval.chair.chair`
and :func:`~halluremedy.eval.chair.ground_truth_objects` take either.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from halluremedy.eval.chair import Mention, chair_signature

__all__ = [
    "DEFAULT_REVISION",
    "LISAANNE_2018_SYNONYMS",
    "REFERENCE_REVISIONS",
    "ReferenceVocabulary",
    "double_words",
    "pattern_singularize",
    "reference_tokenize",
    "treebank_tokenize",
]

# ---- the synonym list ------------------------------------------------------------------------
# data/synonyms.txt of LisaAnne/Hallucination, one line per COCO class (the class first), retyped
# as data with its quirks: a double space before "motor bike" and "cheesecake" (so the original's
# split(", ") keeps a leading space and the entry never matches), "iPhone" capitalised (captions
# are lowercased), misspellings ("televison", "solider", "phon", "knive") and repeats.
LISAANNE_2018_SYNONYMS: tuple[str, ...] = (
    "person, girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, baby, worker, "
    "passenger, sister, biker, policeman, cop, officer, lady, cowboy, bride, groom, male, female, guy, traveler, "
    "mother, father, gentleman, pitcher, player, skier, snowboarder, skater, skateboarder, person, woman, guy, "
    "foreigner, child, gentleman, caller, offender, coworker, trespasser, patient, politician, soldier, "
    "grandchild, serviceman, walker, drinker, doctor, bicyclist, thief, buyer, teenager, student, camper, "
    "driver, solider, hunter, shopper, villager",
    "bicycle, bike, bicycle, bike, unicycle, minibike, trike",
    "car, automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi",
    "motorcycle, scooter,  motor bike, motor cycle, motorbike, scooter, moped",
    "airplane, jetliner, plane, air plane, monoplane, aircraft, jet, jetliner, airbus, biplane, seaplane",
    "bus, minibus, trolley",
    "train, locomotive, tramway, caboose",
    "truck, pickup, lorry, hauler, firetruck",
    "boat, ship, liner, sailboat, motorboat, dinghy, powerboat, speedboat, canoe, skiff, yacht, kayak, "
    "catamaran, pontoon, houseboat, vessel, rowboat, trawler, ferryboat, watercraft, tugboat, schooner, barge, "
    "ferry, sailboard, paddleboat, lifeboat, freighter, steamboat, riverboat, battleship, steamship",
    "traffic light, street light, traffic signal, stop light, streetlight, stoplight",
    "fire hydrant, hydrant",
    "stop sign",
    "parking meter",
    "bench, pew",
    "bird, ostrich, owl, seagull, goose, duck, parakeet, falcon, robin, pelican, waterfowl, heron, hummingbird, "
    "mallard, finch, pigeon, sparrow, seabird, osprey, blackbird, fowl, shorebird, woodpecker, egret, "
    "chickadee, quail, bluebird, kingfisher, buzzard, willet, gull, swan, bluejay, flamingo, cormorant, parrot, "
    "loon, gosling, waterbird, pheasant, rooster, sandpiper, crow, raven, turkey, oriole, cowbird, warbler, "
    "magpie, peacock, cockatiel, lorikeet, puffin, vulture, condor, macaw, peafowl, cockatoo, songbird",
    "cat, kitten, feline, tabby",
    "dog, puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, collie, pug, "
    "terrier, poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, sheepdog, weimaraner, corgi, "
    "cocker, greyhound, retriever, brindle, hound, whippet, husky",
    "horse, colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, clydesdale, bronc, bronco",
    "sheep, lamb, ram, lamb, goat, ewe",
    "cow, cattle, oxen, ox, calf, cattle, holstein, heifer, buffalo, bull, zebu, bison",
    "elephant",
    "bear, panda",
    "zebra",
    "giraffe",
    "backpack, knapsack",
    "umbrella",
    "handbag, wallet, purse, briefcase",
    "tie, bow, bow tie",
    "suitcase, suit case, luggage",
    "frisbee",
    "skis, ski",
    "snowboard",
    "sports ball, ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard, longboard, skimboard, shortboard, wakeboard",
    "tennis racket, racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife, pocketknife, knive",
    "spoon",
    "bowl, container",
    "banana",
    "apple",
    "sandwich, burger, sub, cheeseburger, hamburger",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut, doughnut, bagel",
    "cake,  cheesecake, cupcake, shortcake, coffeecake, pancake",
    "chair, seat, stool",
    "couch, sofa, recliner, futon, loveseat, settee, chesterfield",
    "potted plant, houseplant",
    "bed",
    "dining table, table, desk",
    "toilet, urinal, commode, toilet, lavatory, potty",
    "tv, monitor, televison, television",
    "laptop, computer, notebook, netbook, lenovo, macbook, laptop computer",
    "mouse",
    "remote",
    "keyboard",
    "cell phone, mobile phone, phone, cellphone, telephone, phon, smartphone, iPhone",
    "microwave",
    "oven, stovetop, stove, stove top oven",
    "toaster",
    "sink",
    "refrigerator, fridge, fridge, freezer",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear, teddybear",
    "hair drier, hairdryer",
    "toothbrush",
)

# ---- the two-word rules ----------------------------------------------------------------------
# Phrases read as one word (the original's list, with its repeats and its three-word entry, which
# two-word merging never reaches). "home plate" is no synonym entry: merged, then dropped, so its
# "plate" is not read on its own.
_COCO_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "hot dog", "teddy bear", "home plate",
)
#: Revisions of the original ``utils/chair.py`` whose parsing differs -> the phrases they add to the
#: double-word list. ``585f2d9`` (2019-02-26, first published; what the conformance cases follow):
#: "train tracks" is a train mention. ``e36ff5e`` (2019-03-05, the repository's head, and the
#: copy most later LVLM evaluation code carries): "train track" is merged and dropped.
REFERENCE_REVISIONS: dict[str, tuple[str, ...]] = {"585f2d9": (), "e36ff5e": ("train track",)}
DEFAULT_REVISION = "585f2d9"
# "baby X" / "adult X" -> X ("baby animal", "adult cub" merge into words with no class: dropped).
_ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
# "passenger X" -> X.
_VEHICLE_WORDS = ("jet", "train")


def double_words(revision: str = DEFAULT_REVISION) -> dict[str, str]:
    """Two singularised words -> the one word the original reads them as, in its merge pass.

    Raises ValueError for a revision not in :data:`REFERENCE_REVISIONS`.
    """
    if revision not in REFERENCE_REVISIONS:
        raise ValueError(f"unknown CHAIR reference revision {revision!r}; expected one of "
                         f"{', '.join(REFERENCE_REVISIONS)}")
    table = {phrase: phrase for phrase in (*_COCO_DOUBLE_WORDS, *REFERENCE_REVISIONS[revision])}
    for word in _ANIMAL_WORDS:
        table[f"baby {word}"] = word
        table[f"adult {word}"] = word
    for word in _VEHICLE_WORDS:
        table[f"passenger {word}"] = word
    table["bow tie"] = "tie"
    table["toilet seat"] = "toilet"
    table["wine glas"] = "wine glass"  # the singulariser reads "glass" as "glas"
    return table


# ---- tokenizer -------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

# Treebank rules in the order the tokenizer applies them (nltk.word_tokenize adds the typographic
# quotes and the sentence-final period rule that lets closing quotes follow it).
_STARTING_QUOTES = (
    (re.compile("([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), "``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r'([ (\[{<])"'), r"\1 `` "),
)
_PUNCTUATION = (
    (re.compile(r"([^\.])(\.)([\]\)}>\"'»”’ ]*)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.\.\."), r" ... "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"([^\.])(\.)([\]\)}>\"']*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
)
_BRACKETS = (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> ")
_DOUBLE_DASHES = (re.compile(r"--"), r" -- ")
_ENDING_QUOTES = (
    (re.compile("([»”’])"), r" \1 "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"(\S)(\'\')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
)
_CONTRACTIONS = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"\b(can)(not)\b", r"\b(d)('ye)\b", r"\b(gim)(me)\b", r"\b(gon)(na)\b", r"\b(got)(ta)\b", r"\b(lem)(me)\b",
    r"\b(mor)('n)\b", r"\b(wan)(na)\s", r" ('t)(is)\b", r" ('t)(was)\b",
))


def treebank_tokenize(sentence: str) -> list[str]:
    """One sentence -> tokens, as the Penn Treebank tokenizer splits it (nltk's ``word_tokenize`` rules).

    >>> treebank_tokenize("the man's hot-dogs, on a plate.")
    ['the', 'man', "'s", 'hot-dogs', ',', 'on', 'a', 'plate', '.']

    Only a period at the end of the sentence is split off ("st. louis" keeps ``st.``).
    """
    text = sentence
    for pattern, repl in _STARTING_QUOTES:
        text = pattern.sub(repl, text)
    for pattern, repl in _PUNCTUATION:
        text = pattern.sub(repl, text)
    for pattern, repl in (_BRACKETS, _DOUBLE_DASHES):
        text = pattern.sub(repl, text)
    text = f" {text} "
    for pattern, repl in _ENDING_QUOTES:
        text = pattern.sub(repl, text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


def reference_tokenize(caption: str) -> list[str]:
    """CHAIR's tokens of a caption: lowercased, split into sentences, each Treebank-tokenized."""
    return [token for sentence in _SENTENCE_END.split(caption.lower()) for token in treebank_tokenize(sentence)]


# ---- singulariser ----------------------------------------------------------------------------
# pattern.en's singularize (pattern 3.6), rule for rule; its quirks are the reference's behaviour.
_PLURAL_PREPOSITIONS = frozenset((
    "about", "before", "during", "of", "till", "above", "behind", "except", "off", "to", "across", "below", "for",
    "on", "under", "after", "beneath", "from", "onto", "until", "among", "beside", "in", "out", "unto", "around",
    "besides", "into", "over", "upon", "at", "between", "near", "since", "with", "athwart", "betwixt", "beyond",
    "but", "by",
))
# A word is left alone when one of these *ends with* it (so "rout", "and", "eat" are left alone too).
_UNINFLECTED = (
    "bison", "debris", "headquarters", "pincers", "trout", "bream", "diabetes", "herpes", "pliers", "tuna",
    "breeches", "djinn", "high-jinks", "proceedings", "whiting", "britches", "eland", "homework", "rabies",
    "wildebeest", "carp", "elk", "innings", "salmon", "chassis", "flounder", "jackanapes", "scissors", "christmas",
    "gallows", "mackerel", "series", "clippers", "georgia", "measles", "shears", "cod", "graffiti", "mews",
    "species", "contretemps", "mumps", "swine", "corps", "news", "swiss",
    # uncountable
    "advice", "equipment", "happiness", "luggage", "news", "software", "bread", "fruit", "information",
    "mathematics", "progress", "understanding", "butter", "furniture", "ketchup", "mayonnaise", "research",
    "water", "cheese", "garbage", "knowledge", "meat", "rice", "electricity", "gravel", "love", "mustard", "sand",
)
# Words ending in one of these + "s" are returned as they are (plural kept). "^pie" and "^tie" are
# written with a literal caret in pattern, so they never match: "ties" -> "ty".
_IE_WORDS = (
    "alergie", "cutie", "hoagie", "newbie", "softie", "veggie", "auntie", "doggie", "hottie", "nightie", "sortie",
    "weenie", "beanie", "eyrie", "indie", "oldie", "stoolie", "yuppie", "birdie", "freebie", "junkie", "^pie",
    "sweetie", "zombie", "bogie", "goonie", "laddie", "pixie", "techie", "bombie", "groupie", "laramie", "quickie",
    "^tie", "collie", "hankie", "lingerie", "reverie", "toughie", "cookie", "hippie", "meanie", "rookie",
    "valkyrie",
)
# Irregular endings, first match in this order wins ("women" ends in "men": "woman").
_IRREGULAR = (
    ("atlantes", "atlas"), ("atlases", "atlas"), ("axes", "axe"), ("beeves", "beef"), ("brethren", "brother"),
    ("children", "child"), ("corpora", "corpus"), ("corpuses", "corpus"), ("ephemerides", "ephemeris"),
    ("feet", "foot"), ("ganglia", "ganglion"), ("geese", "goose"), ("genera", "genus"), ("genii", "genie"),
    ("graffiti", "graffito"), ("helves", "helve"), ("kine", "cow"), ("leaves", "leaf"), ("loaves", "loaf"),
    ("men", "man"), ("mongooses", "mongoose"), ("monies", "money"), ("moves", "move"), ("mythoi", "mythos"),
    ("numena", "numen"), ("occipita", "occiput"), ("octopodes", "octopus"), ("opera", "opus"), ("opuses", "opus"),
    ("our", "my"), ("oxen", "ox"), ("penes", "penis"), ("penises", "penis"), ("people", "person"), ("sexes", "sex"),
    ("soliloquies", "soliloquy"), ("teeth", "tooth"), ("testes", "testis"), ("trilbys", "trilby"),
    ("turves", "turf"), ("zoa", "zoon"),
)
# Suffix rules, first match wins; the last one drops any final "s" ("bus" -> "bu", "glass" -> "glas").
_SUFFIX_RULES = tuple((re.compile(pattern), repl) for pattern, repl in (
    (r"(?i)(.)ae$", r"\1a"),
    (r"(?i)(.)itis$", r"\1itis"),
    (r"(?i)(.)eaux$", r"\1eau"),
    (r"(?i)(quiz)zes$", r"\1"),
    (r"(?i)(matr)ices$", r"\1ix"),
    (r"(?i)(ap|vert|ind)ices$", r"\1ex"),
    (r"(?i)^(ox)en", r"\1"),
    (r"(?i)(alias|status)es$", r"\1"),
    (r"(?i)([octop|vir])i$", r"\1us"),  # a character class in pattern: any word ending in [copt|vir] + "i"
    (r"(?i)(cris|ax|test)es$", r"\1is"),
    (r"(?i)(shoe)s$", r"\1"),
    (r"(?i)(o)es$", r"\1"),
    (r"(?i)(bus)es$", r"\1"),
    (r"(?i)([m|l])ice$", r"\1ouse"),
    (r"(?i)(x|ch|ss|sh)es$", r"\1"),
    (r"(?i)(m)ovies$", r"\1ovie"),
    (r"(?i)(.)ombies$", r"\1ombie"),
    (r"(?i)(s)eries$", r"\1eries"),
    (r"(?i)([^aeiouy]|qu)ies$", r"\1y"),
    (r"([aeo]l)ves$", r"\1f"),
    (r"([^d]ea)ves$", r"\1f"),
    (r"arves$", "arf"),
    (r"erves$", "erve"),
    (r"([nlw]i)ves$", r"\1fe"),
    (r"(?i)([lr])ves$", r"\1f"),
    (r"([aeo])ves$", r"\1ve"),
    (r"(?i)(sive)s$", r"\1"),
    (r"(?i)(tive)s$", r"\1"),
    (r"(?i)(hive)s$", r"\1"),
    (r"(?i)([^f])ves$", r"\1fe"),
    (r"(?i)(^analy)ses$", r"\1sis"),
    (r"(?i)((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$", r"\1\2sis"),
    (r"(?i)(.)opses$", r"\1opsis"),
    (r"(?i)(.)yses$", r"\1ysis"),
    (r"(?i)(h|d|r|o|n|b|cl|p)oses$", r"\1ose"),
    (r"(?i)(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$", r"\1ose"),
    (r"(?i)(.)oses$", r"\1osis"),
    (r"(?i)([ti])a$", r"\1um"),
    (r"(?i)(n)ews$", r"\1ews"),
    (r"(?i)s$", ""),
))


@lru_cache(maxsize=65536)
def pattern_singularize(word: str) -> str:
    """pattern.en's ``singularize`` of one token, its bugs included.

    >>> [pattern_singularize(w) for w in ("buses", "bus", "ties", "glass", "women", "knives", "mice")]
    ['bus', 'bu', 'ty', 'glas', 'woman', 'knife', 'mouse']
    """
    if "-" in word:
        head, *rest = word.split("-")
        if rest and rest[0] in _PLURAL_PREPOSITIONS:  # "mothers-in-law"
            return pattern_singularize(head) + "-" + "-".join(rest)
    if word.endswith("'"):
        return pattern_singularize(word[:-1]) + "'s"
    lower = word.lower()
    if any(x.endswith(lower) for x in _UNINFLECTED):
        return word
    if any(lower.endswith(x + "s") for x in _IE_WORDS):
        return lower
    for plural, singular in _IRREGULAR:
        if lower.endswith(plural):
            return re.sub(f"(?i){plural}$", singular, word)
    for pattern, repl in _SUFFIX_RULES:
        if pattern.search(word):
            return pattern.sub(repl, word)
    return word


# ---- the vocabulary --------------------------------------------------------------------------

def _parse_synonyms(lines: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
    """(classes, entry -> class) as the original reads its file: ``line.strip().split(", ")``."""
    classes, inverse = [], {}
    for line in lines:
        entries = line.strip().split(", ")
        classes.append(entries[0])
        for entry in entries:
            inverse[entry] = entries[0]
    return tuple(classes), inverse


class ReferenceVocabulary:
    """The original CHAIR parser over the 80 COCO classes; same interface as ``ObjectVocabulary``.

    ``revision``: which published ``utils/chair.py`` to follow (:data:`REFERENCE_REVISIONS`); it
    is part of :attr:`signature`. ``Mention.text`` is the caption's tokens that made the mention
    (``"passenger jet"``), ``Mention.lemma`` the word the original counted (``"jet"``),
    ``Mention.token_index`` the first token's index in :func:`reference_tokenize`.
    """

    compat = "reference"
    tokenizer = "treebank"
    singularizer = "pattern-3.6"

    def __init__(self, revision: str = DEFAULT_REVISION) -> None:
        self.revision = revision
        self._double_words = double_words(revision)
        self.classes, self._inverse = _parse_synonyms(LISAANNE_2018_SYNONYMS)
        content = repr((LISAANNE_2018_SYNONYMS, sorted(self._double_words.items())))
        self.synonym_table = f"lisaanne-2018@{revision}.{hashlib.sha256(content.encode()).hexdigest()[:8]}"

    @property
    def signature(self) -> str:
        """:func:`~halluremedy.eval.chair.chair_signature`, e.g.
        ``chair:reference|syn:lisaanne-2018@585f2d9.<sha8>|tok:treebank|sing:pattern-3.6|v1``."""
        return chair_signature(self)

    def extract_mentions(self, caption: str) -> list[Mention]:
        """Object mentions of ``caption`` in order, repeats included, as the original finds them."""
        tokens = reference_tokenize(caption)
        words = [pattern_singularize(t) for t in tokens]
        merged: list[tuple[int, int, str]] = []  # (first token, number of tokens, word read)
        i = 0
        while i < len(words):
            pair = " ".join(words[i:i + 2])
            if pair in self._double_words:
                merged.append((i, 2, self._double_words[pair]))
                i += 2
            else:
                merged.append((i, 1, words[i]))
                i += 1
        if any(word == "toilet" for _, _, word in merged):  # the seat of a toilet is no chair
            merged = [m for m in merged if m[2] != "seat"]
        return [Mention(" ".join(tokens[start:start + n]), word, self._inverse[word], start)
                for start, n, word in merged if word in self._inverse]
