"""Where diagnosis gets "what is really in the image": annotations, or a detector where there are none.

A backend turns one image into the objects it holds (``CocoObject``: category, box, attributes).
Diagnosis only ever asks a backend, so a COCO-format split with annotations and an unannotated
image folder with an open-vocabulary detector go through the same code:

* :class:`AnnotationBackend`: the split's own annotations (the backend that is tested end to end);
* :class:`DetectorBackend`: any callable ``detect(pil_image) -> [Detection]`` (OWL-ViT, Grounding
  DINO, ...), kept above a score threshold and restricted to the vocabulary's classes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from halluremedy.data.coco import CocoImage, CocoObject

__all__ = ["AnnotationBackend", "Detection", "DetectorBackend", "TruthBackend"]


class TruthBackend(Protocol):
    """The objects an image really holds."""

    name: str  # recorded in the diagnosis JSON

    def objects(self, image: CocoImage, pixels: Image.Image) -> tuple[CocoObject, ...]:
        """Objects of ``image`` (``pixels`` is its RGB content, for backends that look)."""
        ...


class AnnotationBackend:
    """Ground truth from the split's annotations (boxes, categories, attributes)."""

    name = "annotations"

    def objects(self, image: CocoImage, pixels: Image.Image) -> tuple[CocoObject, ...]:
        return image.objects


@dataclass(frozen=True)
class Detection:
    """One detector output; ``attributes`` as annotations would carry them (may be empty)."""

    category: str
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    score: float
    attributes: dict[str, str] = field(default_factory=dict)


class DetectorBackend:
    """Ground truth from a detector: detections scoring at least ``threshold`` whose category is
    one of ``categories`` (others are dropped, as CHAIR drops words outside its vocabulary)."""

    def __init__(self, detect: Callable[[Image.Image], Sequence[Detection]], categories: Collection[str], *,
                 threshold: float = 0.3, name: str = "detector"):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"DetectorBackend threshold={threshold!r} must lie in [0, 1]")
        self.detect = detect
        self.categories = frozenset(categories)
        self.threshold = threshold
        self.name = f"{name}@{threshold:g}"

    def objects(self, image: CocoImage, pixels: Image.Image) -> tuple[CocoObject, ...]:
        return tuple(CocoObject(d.category, tuple(float(v) for v in d.bbox), dict(d.attributes))
                     for d in self.detect(pixels) if d.score >= self.threshold and d.category in self.categories)
