"""Word-level text normalisation for caption parsing: a tokenizer and an English singularizer.

Both are small and dependency-free on purpose (NLTK's tokenizer and pattern's singularizer need
data downloads). They are written for object nouns in image captions, not for English at large:

* :func:`tokenize` lowercases and splits into words and single punctuation characters, splitting
  clitics the way NLTK's Treebank tokenizer does (``"don't" -> "do", "n't"``,
  ``"man's" -> "man", "'s"``).
* :func:`singularize` maps a lowercase plural noun to its singular (``"knives" -> "knife"``,
  ``"buses" -> "bus"``, ``"glasses" -> "glass"``, ``"people" -> "person"``) and leaves singular
  nouns alone (``"bus"``, ``"tennis"``, ``"glass"``, ``"scissors"``, ``"sheep"``).
"""

from __future__ import annotations

import re

__all__ = ["is_word", "singularize", "tokenize"]

# A word is a run of letters/digits; "n't" and the clitics 's 'm 'd 'll 're 've after a word are
# tokens of their own; every other non-space character is a one-character punctuation token.
_TOKEN_RE = re.compile(r"[^\W_]+(?=n't\b)|n't\b|(?<=[^\W_])'(?:s|m|d|ll|re|ve)\b|[^\W_]+|\S")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it into word and punctuation tokens.

    >>> tokenize("Two men's bikes, don't they?")
    ['two', 'men', "'s", 'bikes', ',', 'do', "n't", 'they', '?']

    Hyphens and quotes are punctuation tokens (``"hot-dog" -> "hot", "-", "dog"``); typographic
    apostrophes are read as ``'``.
    """
    return _TOKEN_RE.findall(text.lower().translate(_APOSTROPHES))


def is_word(token: str) -> bool:
    """True for a word token from :func:`tokenize` (letters/digits), False for punctuation and clitics."""
    return token.isalnum()


# Plural -> singular for whole words that no suffix rule covers.
_IRREGULAR = {
    "people": "person", "mice": "mouse", "dormice": "dormouse", "geese": "goose", "oxen": "ox",
    "lice": "louse", "dice": "die", "cacti": "cactus", "fungi": "fungus", "octopi": "octopus",
    "busses": "bus", "quizzes": "quiz", "crises": "crisis", "analyses": "analysis", "oases": "oasis",
    "theses": "thesis", "diagnoses": "diagnosis", "lives": "life",
}

# Irregular plural endings, applied to compounds too ("policemen", "grandchildren", "pocketknives").
_IRREGULAR_SUFFIXES = (
    ("children", "child"), ("people", "person"), ("teeth", "tooth"), ("feet", "foot"), ("men", "man"),
    ("knives", "knife"), ("wives", "wife"), ("leaves", "leaf"), ("loaves", "loaf"), ("halves", "half"),
    ("calves", "calf"), ("wolves", "wolf"), ("elves", "elf"), ("thieves", "thief"), ("scarves", "scarf"),
    ("hooves", "hoof"), ("sheaves", "sheaf"), ("wharves", "wharf"), ("dwarves", "dwarf"),
)

# Singular nouns ending in "men" that the "-men -> -man" rule must not touch.
_MEN_SINGULARS = frozenset({
    "omen", "amen", "semen", "abdomen", "specimen", "stamen", "ramen", "hymen", "regimen", "lumen",
    "acumen", "albumen", "bitumen", "cyclamen", "rumen", "foramen", "yemen",
})

# Words that end in "s" (or look plural) but are the same in singular, or are not nouns at all.
_INVARIANT = frozenset({
    "sheep", "deer", "fish", "moose", "swine", "bison", "salmon", "trout", "shrimp", "squid", "cod",
    "aircraft", "spacecraft", "hovercraft", "watercraft", "offspring", "cattle", "police", "species",
    "series", "news", "means", "scissors", "pants", "jeans", "shorts", "trousers", "pajamas", "pyjamas",
    "clothes", "binoculars", "tongs", "pliers", "tweezers", "headquarters", "barracks", "gallows",
    "crossroads", "physics", "mathematics", "economics", "athletics", "gymnastics", "politics", "lens",
    "gas", "canvas", "atlas", "alias", "bias", "christmas", "texas", "pancreas", "overseas", "whereas",
    "has", "was", "as", "its", "yes", "always", "perhaps", "across", "besides", "sometimes", "towards",
    "afterwards", "upwards", "downwards", "backwards", "forwards", "nowadays", "chaos", "cosmos",
    "kudos", "ethos", "thermos", "asbestos", "rhinoceros",
})

# Nouns ending in -i, -u whose plural is a plain "+s" ("skis", "taxis", "menus"); other words in
# -is / -us are singular ("tennis", "this", "bus", "cactus").
_PLURALS_IN_IS_US = frozenset({
    "skis", "taxis", "kiwis", "bikinis", "semis", "safaris", "minis", "yetis", "zucchinis", "khakis",
    "alibis", "martinis", "tipis", "salamis", "menus", "emus", "gnus", "gurus", "tutus", "haikus",
    "zebus", "tofus",
})

# Singular nouns in -us / -as / -ns whose plural adds "es" ("cactuses", "canvases", "lenses").
_ES_AFTER_S = frozenset({
    "cactus", "virus", "walrus", "bonus", "campus", "octopus", "circus", "citrus", "hippopotamus",
    "platypus", "fungus", "genus", "census", "chorus", "status", "abacus", "apparatus", "asparagus",
    "hummus", "sinus", "lotus", "nexus", "stimulus", "syllabus", "crocus", "eucalyptus", "rhombus",
    "thesaurus", "gas", "canvas", "atlas", "alias", "bias", "christmas", "lens", "iris",
    "bus", "minibus", "omnibus", "trolleybus", "schoolbus", "autobus", "airbus",
})

# Nouns in -ie whose plural must not become -y ("cookies" -> "cookie", not "cooky").
_IE_NOUNS = frozenset({
    "movie", "cookie", "brownie", "zombie", "calorie", "hippie", "rookie", "goalie", "hoodie",
    "smoothie", "selfie", "veggie", "magpie", "collie", "doggie", "birdie", "genie", "pixie", "prairie",
    "necktie", "bowtie", "beanie", "bootie", "cutie", "sweetie", "goodie", "oldie", "wheelie", "ollie",
    "yorkie", "scottie", "sheltie", "westie", "hankie", "nightie", "talkie", "kiddie", "boogie",
    "aussie", "auntie", "bookie", "newbie", "sortie", "techie", "yuppie", "freebie", "groupie",
    "junkie", "budgie", "potpie", "pinkie", "foodie", "indie", "rotisserie", "lingerie", "reverie",
    "menagerie", "coterie", "camaraderie", "cowrie", "hottie", "softie", "caddie", "cabbie", "stogie",
    "townie", "mountie", "meanie", "eyrie", "specie",
})

# Nouns in -oe ("shoes" -> "shoe"); other -oes plurals drop "es" ("tomatoes" -> "tomato").
_OE_NOUNS = frozenset({
    "shoe", "toe", "hoe", "canoe", "oboe", "floe", "foe", "throe", "tiptoe", "roe", "doe", "sloe",
    "aloe", "woe", "mistletoe", "horseshoe", "snowshoe", "overshoe",
})

# Nouns in -che ("niches" -> "niche"); other -ches plurals drop "es" ("benches" -> "bench").
_CHE_NOUNS = frozenset({
    "niche", "cache", "moustache", "mustache", "ache", "headache", "toothache", "stomachache",
    "backache", "earache", "heartache", "bellyache", "avalanche", "cliche", "quiche", "brioche",
    "psyche", "creche", "panache", "gouache", "douche", "ganache", "microfiche",
})


def singularize(word: str) -> str:
    """Singular of a lowercase English noun; singular nouns and non-nouns come back unchanged.

    Rules, first match wins: short words (<= 2 letters) and invariants; whole-word irregulars
    (``mice``, ``geese``, ``oxen``, ``dice`` ...); irregular endings, compounds included
    (``-men``, ``-children``, ``-people``, ``-teeth``, ``-feet``, ``-knives``, ``-leaves`` ...);
    ``-ss``/``-us``/``-is`` words are singular unless listed as ``+s`` plurals of ``-i``/``-u``
    nouns (``skis``, ``taxis``, ``menus``); ``-ies`` -> ``-y`` unless an ``-ie`` noun; ``-oes``,
    ``-ches``, ``-shes``, ``-xes``, ``-zzes``, ``-sses`` and ``-ses`` of listed ``-us``/``-as``/``-ns``
    nouns drop ``es``; any other final ``s`` is dropped.
    """
    if len(word) <= 2 or word in _INVARIANT:
        return word
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    for plural_end, singular_end in _IRREGULAR_SUFFIXES:
        if word.endswith(plural_end) and not (plural_end == "men" and word in _MEN_SINGULARS):
            return word[: len(word) - len(plural_end)] + singular_end
    if not word.endswith("s"):
        return word
    if word in _PLURALS_IN_IS_US:
        return word[:-1]
    if word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-1] if len(word) <= 4 or word[:-1] in _IE_NOUNS else word[:-3] + "y"
    if word.endswith("oes"):
        return word[:-1] if word[:-1] in _OE_NOUNS else word[:-2]
    if word.endswith("ches"):
        return word[:-1] if word[:-1] in _CHE_NOUNS else word[:-2]
    if word.endswith(("shes", "xes", "zzes", "tzes", "sses")):
        return word[:-2]
    if word.endswith("ses") and word[:-2] in _ES_AFTER_S:
        return word[:-2]
    return word[:-1]
