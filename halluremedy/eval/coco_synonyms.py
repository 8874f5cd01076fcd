"""The COCO object vocabulary for CHAIR: 80 classes, their surface words, and the parsing rules.

Written for halluremedy after the description of Rohrbach et al.'s (2018) CHAIR parser; the word
lists are our own. Surface words are written singular; captions and this table go through the
same tokenizer and singularizer (:mod:`halluremedy.eval.text`), so plurals need no entries.

What is in the table besides plain synonyms:

* the multi-word phrases CHAIR merges before looking words up (``"motor bike"``, ``"traffic light"``,
  ``"hot dog"``, ``"teddy bear"``, ``"stove top oven"`` ...); a phrase always wins over its words,
  so a hot dog is not a dog and a teddy bear is not a bear;
* ``"baby X"`` / ``"adult X"`` for every animal word X -> X's class (a baby elephant is not a
  person), ``"baby animal"``-like phrases with no class are dropped;
* ``"passenger X"`` for every airplane and train word X -> X's class (a passenger jet has no
  person in it by name); the published rule names "passenger jet/train", we apply it to every word
  of those two classes (``"passenger plane"`` too);
* ``"bow tie"`` -> tie, ``"toilet seat"`` -> toilet;
* phrases that contain a class word but name no COCO object (``"home plate"``, ``"train track"``)
  are read and dropped (:data:`COCO_NON_OBJECT_PHRASES`);
* in a caption that mentions a toilet, the word ``"seat"`` is not a chair (:data:`COCO_EXCLUSIONS`).

Our additions beyond the published lists, each to stop a word being read as the wrong object:
``"jet ski"`` and the ``"ski slope"``-like phrases are dropped (no airplane, no skis);
``"toilet bowl"`` -> toilet, ``"microwave oven"`` -> microwave, ``"love seat"`` -> couch,
``"pit bull"`` / ``"german shepherd"`` -> dog, ``"stuffed bear"`` -> teddy bear,
``"computer monitor/screen/mouse/keyboard"`` -> the named device.
Deliberately absent, because they are mostly something else in captions: ``"bat"`` (the animal),
``"glove"``, ``"glass"``/``"glasses"`` (eyeglasses), ``"meter"`` (a unit), ``"plant"``, ``"cycle"``,
``"telephone"`` (telephone poles), ``"notebook"``, ``"turkey"``/``"chicken"`` (food), ``"bow"``.
"""

from __future__ import annotations

__all__ = [
    "COCO_ANIMAL_CLASSES",
    "COCO_CLASSES",
    "COCO_EXCLUSIONS",
    "COCO_NON_OBJECT_PHRASES",
    "COCO_PASSENGER_VEHICLE_CLASSES",
    "COCO_SYNONYMS",
    "coco_phrase_table",
]

# The 80 COCO detection classes, in category-id order, spelled as in instances_*.json.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

# Class -> surface words and phrases (singular). The class name itself is always a surface form.
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "person", "people", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "infant",
        "adult", "teen", "teenager", "youngster", "guy", "lady", "gentleman", "male", "female", "player",
        "pitcher", "catcher", "umpire", "skier", "snowboarder", "surfer", "skateboarder", "skater", "rider",
        "biker", "cyclist", "bicyclist", "motorcyclist", "driver", "passenger", "pedestrian", "tourist",
        "traveler", "worker", "chef", "baker", "waiter", "waitress", "doctor", "nurse", "officer",
        "policeman", "policewoman", "cop", "soldier", "fireman", "firefighter", "student", "teacher",
        "mother", "father", "mom", "dad", "brother", "sister", "son", "daughter", "grandmother",
        "grandfather", "husband", "wife", "bride", "groom", "athlete", "runner", "jogger", "hiker",
        "camper", "fisherman", "farmer", "shopper", "vendor", "customer", "cowboy", "jockey", "spectator",
    ),
    "bicycle": ("bicycle", "bike", "unicycle", "tricycle", "trike", "minibike"),
    "car": (
        "car", "automobile", "van", "minivan", "sedan", "suv", "hatchback", "coupe", "cab", "taxi", "taxicab",
        "jeep", "limo", "limousine",
    ),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "motor cycle", "moped", "scooter", "dirt bike"),
    "airplane": (
        "airplane", "aeroplane", "plane", "air plane", "jet", "jetliner", "airliner", "aircraft", "biplane",
        "seaplane", "monoplane",
    ),
    "bus": ("bus", "minibus", "trolleybus", "schoolbus"),
    "train": ("train", "locomotive", "tram", "streetcar", "railcar", "caboose", "train car"),
    "truck": ("truck", "pickup", "lorry", "firetruck", "semi"),
    "boat": (
        "boat", "ship", "sailboat", "yacht", "canoe", "kayak", "ferry", "speedboat", "motorboat", "rowboat",
        "dinghy", "tugboat", "barge", "vessel", "gondola", "catamaran", "houseboat", "lifeboat", "steamboat",
        "paddleboat", "schooner", "freighter",
    ),
    "traffic light": ("traffic light", "traffic signal", "stop light", "stoplight", "street light", "streetlight"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter",),
    "bench": ("bench", "pew"),
    "bird": (
        "bird", "pigeon", "dove", "sparrow", "seagull", "gull", "duck", "duckling", "goose", "gosling", "swan",
        "owl", "eagle", "hawk", "falcon", "parrot", "parakeet", "crow", "raven", "robin", "finch", "pelican",
        "heron", "flamingo", "ostrich", "peacock", "penguin", "hen", "rooster", "hummingbird", "woodpecker",
        "bluebird", "blackbird", "mallard", "egret", "stork", "vulture", "magpie", "kingfisher", "cockatoo",
        "macaw", "puffin", "sandpiper", "seabird", "songbird", "waterfowl", "fowl",
    ),
    "cat": ("cat", "kitten", "kitty", "feline", "tabby"),
    "dog": (
        "dog", "puppy", "pup", "doggy", "doggie", "canine", "hound", "terrier", "poodle", "labrador",
        "retriever", "bulldog", "beagle", "dachshund", "chihuahua", "collie", "corgi", "husky", "pug",
        "spaniel", "sheepdog", "greyhound", "rottweiler", "schnauzer", "dalmatian", "pitbull", "pit bull",
        "german shepherd", "mutt",
    ),
    "horse": ("horse", "pony", "foal", "colt", "mare", "stallion", "racehorse", "clydesdale", "palomino"),
    "sheep": ("sheep", "lamb", "ram", "ewe", "goat"),
    "cow": ("cow", "cattle", "calf", "bull", "ox", "heifer", "buffalo", "bison", "yak", "zebu", "longhorn", "holstein"),
    "elephant": ("elephant",),
    "bear": ("bear", "grizzly"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "back pack", "knapsack", "rucksack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "hand bag", "purse", "briefcase", "wallet"),
    "tie": ("tie", "necktie", "bow tie", "bowtie"),
    "suitcase": ("suitcase", "suit case", "luggage"),
    "frisbee": ("frisbee", "flying disc"),
    "skis": ("skis", "ski"),
    "snowboard": ("snowboard",),
    "sports ball": ("sports ball", "ball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat",),
    "baseball glove": ("baseball glove", "baseball mitt", "mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": (
        "surfboard", "surf board", "longboard", "shortboard", "bodyboard", "boogie board", "paddleboard",
        "paddle board", "wakeboard", "skimboard",
    ),
    "tennis racket": ("tennis racket", "racket", "racquet", "tennis racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass", "wineglass", "champagne glass"),
    "cup": ("cup", "mug", "teacup"),
    "fork": ("fork",),
    "knife": ("knife", "pocketknife", "penknife"),
    "spoon": ("spoon", "teaspoon"),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "cheeseburger", "panini"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog", "frankfurter"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cheesecake", "shortcake"),
    "chair": ("chair", "seat", "stool", "armchair", "highchair"),
    "couch": ("couch", "sofa", "loveseat", "love seat", "futon", "settee", "recliner"),
    "potted plant": ("potted plant", "houseplant", "house plant"),
    "bed": ("bed",),
    "dining table": ("dining table", "table", "desk"),
    "toilet": ("toilet", "urinal", "commode", "lavatory", "toilet seat", "toilet bowl"),
    "tv": ("tv", "television", "monitor", "computer monitor", "computer screen"),
    "laptop": ("laptop", "laptop computer", "computer", "netbook", "macbook"),
    "mouse": ("mouse", "computer mouse"),
    "remote": ("remote", "controller", "wiimote"),
    "keyboard": ("keyboard", "computer keyboard"),
    "cell phone": ("cell phone", "cellphone", "mobile phone", "phone", "smartphone", "iphone"),
    "microwave": ("microwave", "microwave oven"),
    "oven": ("oven", "stove", "stovetop", "stove top", "stove top oven"),
    "toaster": ("toaster",),
    "sink": ("sink", "washbasin"),
    "refrigerator": ("refrigerator", "fridge", "freezer"),
    "book": ("book", "paperback", "textbook"),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors",),
    "teddy bear": ("teddy bear", "teddy", "teddybear", "stuffed bear"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer", "blowdryer"),
    "toothbrush": ("toothbrush", "tooth brush"),
}

# "baby X" / "adult X" -> X for the words of these classes (CHAIR's animal rule).
COCO_ANIMAL_CLASSES: tuple[str, ...] = (
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
)
_AGE_MODIFIERS = ("baby", "adult")
_CLASSLESS_ANIMAL_WORDS = ("animal", "cub")  # "baby animal", "baby cub": dropped, and no person

# "passenger X" -> X for the words of these classes (CHAIR's "passenger jet/train" rule).
COCO_PASSENGER_VEHICLE_CLASSES: tuple[str, ...] = ("airplane", "train")

# Phrases that contain a class word but name no COCO object: read as one unit and dropped.
COCO_NON_OBJECT_PHRASES: tuple[str, ...] = (
    "home plate", "train track", "jet ski", "ski slope", "ski lift", "ski pole", "ski resort", "ski lodge",
)

# Surface word -> class: the word is not an object when that class is mentioned in the same caption
# (a seat next to a toilet is the toilet's seat, not a chair).
COCO_EXCLUSIONS: dict[str, str] = {"seat": "toilet"}


def coco_phrase_table() -> dict[str, str | None]:
    """Every COCO surface phrase -> its class, or ``None`` for a phrase read and dropped.

    Plain synonyms from :data:`COCO_SYNONYMS`, the derived ``"baby/adult <animal>"`` and
    ``"passenger <jet/train word>"`` phrases, and :data:`COCO_NON_OBJECT_PHRASES`.
    """
    table: dict[str, str | None] = {}
    for category, words in COCO_SYNONYMS.items():
        table.update((word, category) for word in words)
    for modifier in _AGE_MODIFIERS:
        for category in COCO_ANIMAL_CLASSES:
            table.update((f"{modifier} {word}", category) for word in COCO_SYNONYMS[category])
        table.update((f"{modifier} {word}", None) for word in _CLASSLESS_ANIMAL_WORDS)
    for category in COCO_PASSENGER_VEHICLE_CLASSES:
        table.update((f"passenger {word}", category) for word in COCO_SYNONYMS[category])
    table.update((phrase, None) for phrase in COCO_NON_OBJECT_PHRASES)
    return table
