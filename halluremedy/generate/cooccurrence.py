"""Object co-occurrence statistics from a dataset's own annotations.

Counted per image, not per instance: ``count(a, b)`` is the number of images annotated with at
least one ``a`` and at least one ``b``, and ``P(b | a) = count(a, b) / images(a)``. These choose
the *plausible* absent object of a co-occurrence hallucination (POVID's knife -> "fork"): for a
present class, an absent class drawn with probability proportional to how often it co-occurs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from halluremedy.data.coco import CocoDataset, CocoImage

__all__ = ["CooccurrenceStats"]


@dataclass(frozen=True)
class CooccurrenceStats:
    """Image counts of single classes and of class pairs over one set of images.

    ``image_counts[a]``: images annotated with ``a``; ``pair_counts[a][b]`` (``a != b``, symmetric):
    images annotated with both. Every class of ``categories`` has an entry in both tables.
    """

    categories: tuple[str, ...]
    n_images: int
    image_counts: dict[str, int]
    pair_counts: dict[str, dict[str, int]]

    @classmethod
    def from_images(cls, images: Iterable[CocoImage], categories: Sequence[str]) -> CooccurrenceStats:
        """Count over ``images``; raises ValueError for an annotated class not in ``categories``."""
        known = tuple(categories)
        singles: Counter[str] = Counter()
        pairs: dict[str, Counter[str]] = {c: Counter() for c in known}
        n_images = 0
        for image in images:
            present = image.categories
            if unknown := present - set(known):
                raise ValueError(f"image {image.image_id} is annotated with {sorted(unknown)}, "
                                 f"not among the {len(known)} categories")
            n_images += 1
            singles.update(present)
            for a in present:
                pairs[a].update(b for b in present if b != a)
        return cls(known, n_images, {c: singles[c] for c in known},
                   {a: {b: pairs[a][b] for b in known if b != a} for a in known})

    @classmethod
    def from_dataset(cls, dataset: CocoDataset) -> CooccurrenceStats:
        """Count over every image of a loaded split."""
        return cls.from_images(dataset.images, dataset.categories)

    def count(self, a: str, b: str) -> int:
        """Images annotated with both ``a`` and ``b`` (0 when ``a == b``)."""
        return self.pair_counts[a].get(b, 0)

    def conditional(self, b: str, given: str) -> float:
        """``P(b present | given present)`` over the images; 0.0 when ``given`` never occurs."""
        n = self.image_counts[given]
        return self.count(given, b) / n if n else 0.0

    def partners(self, a: str, *, among: Collection[str] | None = None) -> list[tuple[str, float]]:
        """Classes that co-occur with ``a`` at least once, with ``P(b | a)``, most likely first.

        ``among`` restricts the candidates (e.g. to the classes absent from an image). Ties keep
        the order of ``categories``.
        """
        found = [(b, self.conditional(b, a)) for b in self.categories
                 if b != a and self.count(a, b) > 0 and (among is None or b in among)]
        return sorted(found, key=lambda item: -item[1])

    def sample_partner(self, a: str, among: Collection[str], rng: np.random.Generator) -> str | None:
        """A class of ``among`` drawn with probability proportional to its co-occurrence with ``a``;
        None when no class of ``among`` ever co-occurs with ``a``."""
        found = self.partners(a, among=among)
        if not found:
            return None
        weights = np.array([p for _, p in found], dtype=np.float64)
        return found[int(rng.choice(len(found), p=weights / weights.sum()))][0]
