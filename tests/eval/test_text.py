"""Tokenizer and singularizer: hand-picked cases, the COCO table's own words, and invariants."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from halluremedy.eval.coco_synonyms import COCO_SYNONYMS
from halluremedy.eval.text import is_word, singularize, tokenize


@pytest.mark.parametrize(("text", "tokens"), [
    ("A dog.", ["a", "dog", "."]),
    ("Two Men's bikes, don't they?", ["two", "men", "'s", "bikes", ",", "do", "n't", "they", "?"]),
    ("a hot-dog", ["a", "hot", "-", "dog"]),
    ("isn\u2019t", ["is", "n't"]),  # typographic apostrophe
    ("3.5 cups", ["3", ".", "5", "cups"]),
    ("  spaced\tout\n", ["spaced", "out"]),
    ("caf\u00e9 latte", ["caf\u00e9", "latte"]),  # letters beyond ASCII stay in the word
    ("a sign saying 'stop'", ["a", "sign", "saying", "'", "stop", "'"]),  # quotes are not clitics
    ("the dogs' bowls", ["the", "dogs", "'", "bowls"]),
    ("we're", ["we", "'re"]),
    ("", []),
])
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


@given(st.text(alphabet="aBz09 -.,'\u2019!?\t\n_", max_size=40))
def test_tokenize_keeps_every_non_space_character(text):
    normalised = text.lower().replace("\u2019", "'")
    assert "".join(tokenize(text)) == "".join(normalised.split())


def test_is_word():
    assert [is_word(t) for t in tokenize("Don't, 2 dogs' - x")] == [True, False, False, True, True, False, False, True]


@pytest.mark.parametrize(("plural", "singular"), [
    # regular, -es after s/x/z/ch/sh, -ies, -oes
    ("dogs", "dog"), ("cats", "cat"), ("bikes", "bike"), ("tables", "table"), ("boys", "boy"), ("turkeys", "turkey"),
    ("bananas", "banana"), ("pizzas", "pizza"), ("zebras", "zebra"), ("giraffes", "giraffe"), ("frisbees", "frisbee"),
    ("boxes", "box"), ("foxes", "fox"), ("benches", "bench"), ("sandwiches", "sandwich"), ("couches", "couch"),
    ("dishes", "dish"), ("toothbrushes", "toothbrush"), ("buzzes", "buzz"), ("waltzes", "waltz"), ("prizes", "prize"),
    ("puppies", "puppy"), ("ponies", "pony"), ("kitties", "kitty"), ("strawberries", "strawberry"), ("skies", "sky"),
    ("tomatoes", "tomato"), ("potatoes", "potato"), ("heroes", "hero"), ("buffaloes", "buffalo"), ("photos", "photo"),
    # -ie and -oe nouns keep their e
    ("ties", "tie"), ("neckties", "necktie"), ("cookies", "cookie"), ("movies", "movie"), ("collies", "collie"),
    ("magpies", "magpie"), ("pies", "pie"), ("shoes", "shoe"), ("canoes", "canoe"), ("toes", "toe"),
    ("niches", "niche"), ("headaches", "headache"),
    # -s after s: -sses, -us, -as, -ns nouns, and -se nouns
    ("buses", "bus"), ("busses", "bus"), ("minibuses", "minibus"), ("glasses", "glass"), ("dresses", "dress"),
    ("classes", "class"), ("gases", "gas"), ("lenses", "lens"), ("canvases", "canvas"), ("cactuses", "cactus"),
    ("irises", "iris"), ("horses", "horse"), ("houses", "house"), ("vases", "vase"), ("suitcases", "suitcase"),
    ("purses", "purse"), ("cases", "case"), ("roses", "rose"), ("blouses", "blouse"), ("tortoises", "tortoise"),
    # -i and -u nouns
    ("skis", "ski"), ("taxis", "taxi"), ("kiwis", "kiwi"), ("menus", "menu"), ("zebus", "zebu"),
    # -ves
    ("knives", "knife"), ("pocketknives", "pocketknife"), ("wives", "wife"), ("leaves", "leaf"), ("loaves", "loaf"),
    ("halves", "half"), ("calves", "calf"), ("wolves", "wolf"), ("shelves", "shelf"), ("bookshelves", "bookshelf"),
    ("scarves", "scarf"), ("hooves", "hoof"), ("lives", "life"), ("gloves", "glove"), ("stoves", "stove"),
    ("olives", "olive"), ("waves", "wave"), ("doves", "dove"),
    # irregular, compounds too
    ("people", "person"), ("men", "man"), ("women", "woman"), ("children", "child"), ("mice", "mouse"),
    ("geese", "goose"), ("teeth", "tooth"), ("feet", "foot"), ("oxen", "ox"), ("policemen", "policeman"),
    ("firemen", "fireman"), ("grandchildren", "grandchild"), ("townspeople", "townsperson"), ("crises", "crisis"),
    ("quizzes", "quiz"), ("persons", "person"),
])
def test_singularize_plurals(plural, singular):
    assert singularize(plural) == singular
    assert singularize(singular) == singular


@pytest.mark.parametrize("word", [
    "bus", "minibus", "cactus", "octopus", "asparagus", "hummus", "status", "famous", "us", "plus",
    "glass", "grass", "dress", "chess", "mattress", "tennis", "this", "his", "is", "iris", "axis", "basis",
    "gas", "canvas", "atlas", "christmas", "was", "has", "lens", "yes", "its", "chaos", "thermos", "rhinoceros",
    "sheep", "deer", "fish", "moose", "bison", "species", "series", "news", "scissors", "pants", "jeans",
    "shorts", "clothes", "aircraft", "cattle", "police", "omen", "specimen", "abdomen", "ramen",
    "a", "an", "2", "ox", "child", "person", "man",
])
def test_singularize_leaves_singulars_and_invariants(word):
    assert singularize(word) == word


@pytest.mark.parametrize("category", sorted(COCO_SYNONYMS))
def test_coco_table_words_are_singular(category):
    """Every word of the COCO table reads as itself, bar the few written plural on purpose."""
    written_plural = {"people": "person", "skis": "ski", "sports": "sport"}
    for phrase in COCO_SYNONYMS[category]:
        for word in phrase.split():
            assert singularize(word) == written_plural.get(word, word), (category, phrase, word)


@pytest.mark.parametrize(("plural", "singular"), [
    ("bicycles", "bicycle"), ("motorcycles", "motorcycle"), ("airplanes", "airplane"), ("trucks", "truck"),
    ("boats", "boat"), ("hydrants", "hydrant"), ("benches", "bench"), ("birds", "bird"), ("sheep", "sheep"),
    ("cows", "cow"), ("cattle", "cattle"), ("elephants", "elephant"), ("bears", "bear"), ("backpacks", "backpack"),
    ("umbrellas", "umbrella"), ("handbags", "handbag"), ("suitcases", "suitcase"), ("snowboards", "snowboard"),
    ("balls", "ball"), ("kites", "kite"), ("bats", "bat"), ("skateboards", "skateboard"), ("surfboards", "surfboard"),
    ("rackets", "racket"), ("bottles", "bottle"), ("cups", "cup"), ("forks", "fork"), ("spoons", "spoon"),
    ("bowls", "bowl"), ("apples", "apple"), ("oranges", "orange"), ("carrots", "carrot"), ("donuts", "donut"),
    ("cakes", "cake"), ("chairs", "chair"), ("plants", "plant"), ("beds", "bed"), ("toilets", "toilet"),
    ("tvs", "tv"), ("laptops", "laptop"), ("remotes", "remote"), ("keyboards", "keyboard"), ("phones", "phone"),
    ("microwaves", "microwave"), ("ovens", "oven"), ("toasters", "toaster"), ("sinks", "sink"),
    ("refrigerators", "refrigerator"), ("books", "book"), ("clocks", "clock"), ("vases", "vase"),
    ("driers", "drier"), ("dryers", "dryer"), ("ladies", "lady"), ("guys", "guy"), ("skiers", "skier"),
    ("puppies", "puppy"), ("doggies", "doggie"), ("ponies", "pony"), ("geese", "goose"), ("calves", "calf"),
    ("oxen", "ox"), ("buffalos", "buffalo"), ("sofas", "sofa"), ("stools", "stool"), ("desks", "desk"),
    ("televisions", "television"), ("monitors", "monitor"), ("teddies", "teddy"), ("parasols", "parasol"),
    ("purses", "purse"), ("briefcases", "briefcase"), ("burgers", "burger"),
    ("doughnuts", "doughnut"), ("cupcakes", "cupcake"), ("urinals", "urinal"), ("smartphones", "smartphone"),
    ("stoves", "stove"), ("fridges", "fridge"), ("sheepdogs", "sheepdog"), ("mitts", "mitt"), ("taxis", "taxi"),
    ("minivans", "minivan"), ("jets", "jet"), ("trams", "tram"), ("ships", "ship"), ("ferries", "ferry"),
    ("yachts", "yacht"), ("benches", "bench"), ("pews", "pew"), ("kittens", "kitten"), ("horses", "horse"),
    ("lambs", "lamb"), ("giraffes", "giraffe"), ("ties", "tie"), ("bowties", "bowtie"), ("skis", "ski"),
    ("knives", "knife"), ("sandwiches", "sandwich"), ("broccoli", "broccoli"), ("pizzas", "pizza"),
    ("couches", "couch"), ("mice", "mouse"), ("scissors", "scissors"), ("toothbrushes", "toothbrush"),
    ("buses", "bus"), ("glasses", "glass"),
])
def test_singularize_coco_plurals(plural, singular):
    assert singularize(plural) == singular
