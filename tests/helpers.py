"""Helpers shared by test files: hand-built COCO images and objects.

Importable as ``helpers`` (``pytest.ini`` puts ``tests/`` on ``sys.path``); fixtures live in conftest files.
"""

from __future__ import annotations

from pathlib import Path

from halluremedy.data.coco import CocoImage, CocoObject


def obj(category: str, bbox: tuple[float, float, float, float] = (0, 0, 4, 4), **attributes: str) -> CocoObject:
    return CocoObject(category, tuple(float(v) for v in bbox), dict(attributes))


def image(*objects: CocoObject, captions: tuple[str, ...] = (), image_id: int = 1) -> CocoImage:
    return CocoImage(image_id, f"{image_id}.png", Path(f"{image_id}.png"), 32, 32, objects, captions)


def categories_image(*categories: str, image_id: int = 1) -> CocoImage:
    """An image annotated with one object of each class (for co-occurrence counts)."""
    return image(*(obj(c) for c in categories), image_id=image_id)
