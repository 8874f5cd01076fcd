"""Helpers shared by test files: hand-built COCO images, objects, datasets and preference records.

Importable as ``helpers`` (``pytest.ini`` puts ``tests/`` on ``sys.path``); fixtures live in conftest files.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from halluremedy.data.coco import CocoDataset, CocoImage, CocoObject, write_coco
from halluremedy.data.preference import PreferenceRecord
from halluremedy.diagnose import TruthImage
from halluremedy.eval.chair import ObjectVocabulary


def obj(category: str, bbox: tuple[float, float, float, float] = (0, 0, 4, 4), **attributes: str) -> CocoObject:
    return CocoObject(category, tuple(float(v) for v in bbox), dict(attributes))


def image(*objects: CocoObject, captions: tuple[str, ...] = (), image_id: int = 1) -> CocoImage:
    return CocoImage(image_id, f"{image_id}.png", Path(f"{image_id}.png"), 32, 32, objects, captions)


def categories_image(*categories: str, image_id: int = 1) -> CocoImage:
    """An image annotated with one object of each class (for co-occurrence counts)."""
    return image(*(obj(c) for c in categories), image_id=image_id)


COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
CLASSES = ["square", "circle", "bar"]


def make_tiny_coco(root: Path, split: str = "train", n: int = 6) -> CocoDataset:
    """``n`` 32-px images; image k holds a coloured square and, for odd k, a circle."""
    (root / split).mkdir(parents=True, exist_ok=True)
    images, anns, caps = [], [], []
    for k in range(n):
        color = list(COLORS)[k % 3]
        im = Image.new("RGB", (32, 32), (0, 0, 0))
        im.paste(COLORS[color], (2, 2, 14, 14))
        anns.append((k + 1, "square", (2, 2, 12, 12), {"color": color}))
        cap = f"a {color} square"
        if k % 2:
            im.paste((255, 255, 255), (18, 18, 30, 30))
            anns.append((k + 1, "circle", (18, 18, 12, 12), {"color": "white"}))
            cap += " and a white circle"
        im.save(root / split / f"{k:04d}.png")
        images.append((f"{k:04d}.png", 32, 32))
        caps.append((k + 1, cap + "."))
    write_coco(root, split, images, CLASSES, anns, caps,
               synonyms={"square": ["square", "box"], "circle": ["circle", "disc"], "bar": ["bar"]})
    return CocoDataset.load(root, split)


def tiny_preference_records(ds: CocoDataset, prompt: str = "Describe this image.") -> list[PreferenceRecord]:
    """One record per image of :func:`make_tiny_coco`: its caption preferred; rejected, a swapped class
    (odd images) or a wrong colour and an added bar (even ones)."""
    recs = []
    for k, im in enumerate(ds.images):
        truth = im.captions[0]
        rejected = (truth.replace("square", "circle"),) if k % 2 else (truth.replace("a ", "a green ", 1),
                                                                      truth + " and a bar")
        recs.append(PreferenceRecord(str(k), im.file_name, prompt, truth, rejected))
    return recs


# Hand-made diagnosis inputs: a four-class vocabulary and truth images.
CATS = ["circle", "square", "star", "moon"]
VOCAB = ObjectVocabulary.from_synonyms({"circle": ["circle", "disc"], "square": ["square"], "star": ["star"],
                                        "moon": ["moon"]})
WORDS = {"red": "color", "blue": "color", "green": "color", "small": "size", "large": "size"}


def o(category: str, color: str = "red", size: str = "large") -> CocoObject:
    return CocoObject(category, (0.0, 0.0, 4.0, 4.0), {"color": color, "size": size})


def truth(image_id: int, *objects: CocoObject) -> TruthImage:
    return TruthImage(image_id, f"{image_id}.png", objects, frozenset(x.category for x in objects))
