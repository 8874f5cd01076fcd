"""The scene world's vocabulary, its configuration, and the sampling of scenes.

A scene is 1-4 coloured shapes on a plain background, placed without overlap. Class choice has a
co-occurrence prior: when a *trigger* class is placed, its *partner* class is placed too with
probability ``partner_prob`` (the scene-world analogue of fork -> dining table in COCO), so the
A -> B statistics exist in the annotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SYNONYMS", "CLASSES", "PALETTE", "COLORS", "SIZES", "CONTRASTS", "RELATIONS", "STYLES", "DETAILED_ORDERS",
           "PARTNER_PAIRS", "PARTNERS", "SceneConfig", "SceneObject", "Scene", "sample_scene", "relations",
           "relation_between", "describe_object"]

# Class name -> the singular surface words captions use for it (the class name first).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "dot"),
    "square": ("square", "block", "tile"),
    "triangle": ("triangle", "wedge"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "hoop", "loop"),
    "diamond": ("diamond", "lozenge"),
    "bar": ("bar", "stick", "stripe"),
    "star": ("star", "spark"),
    "crescent": ("crescent", "moon", "half moon"),
    "arrow": ("arrow", "pointer"),
}
CLASSES: tuple[str, ...] = tuple(SYNONYMS)

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 47),
    "green": (60, 180, 75),
    "blue": (40, 100, 230),
    "yellow": (240, 210, 40),
    "purple": (160, 70, 200),
    "white": (240, 240, 240),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SIZES: tuple[str, ...] = ("small", "large")
CONTRASTS: tuple[str, ...] = ("normal", "low")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
STYLES: tuple[str, ...] = ("short", "detailed")  # caption styles, see captions.py
# the orders a detailed caption can name its objects in: "random" (every caption its own), "reading"
# (left to right by centre, then top to bottom: one order per image, so greedy decoding has one next
# object to name, not several)
DETAILED_ORDERS: tuple[str, ...] = ("random", "reading")

# (trigger, partner): placing the trigger places the partner too with probability partner_prob.
PARTNER_PAIRS: tuple[tuple[str, str], ...] = (
    ("star", "crescent"),   # night sky
    ("diamond", "ring"),    # jewellery
    ("triangle", "square"),  # house: roof on a wall
    ("arrow", "circle"),    # target
)
PARTNERS: dict[str, str] = dict(PARTNER_PAIRS)

_MAX_OBJECTS_LIMIT = 9  # captions have number words up to "nine"


@dataclass(frozen=True)
class SceneConfig:
    """Everything that defines the scene world except the seed.

    Sizes are fractions of ``image_size``: a large object's side is drawn uniformly from
    ``large_frac``, a small one's from ``small_frac`` (32 px: large 11-14 px, small 6-8 px). A bar
    is as wide as its side and 0.4 times as high. Hard cases: each object is independently small
    with ``small_share`` and low-contrast (drawn at ``low_contrast_strength`` of its colour's
    distance from the background) with ``low_contrast_share``.

    Trigger classes must not be partners themselves, so one placement adds at most one partner; a
    trigger is only drawn while there is room for its partner, which keeps
    P(partner placed | trigger placed) = ``partner_prob`` exactly.

    ``class_weights`` (one per class, or empty for uniform) makes each drawn class proportional to
    its weight instead: the scene-world analogue of generating images of chosen concepts.
    """

    image_size: int = 32
    min_objects: int = 1
    max_objects: int = 4
    classes: tuple[str, ...] = CLASSES
    colors: tuple[str, ...] = COLORS
    background: tuple[int, int, int] = (30, 30, 30)
    large_frac: tuple[float, float] = (0.34, 0.44)
    small_frac: tuple[float, float] = (0.18, 0.24)
    small_share: float = 0.35
    low_contrast_share: float = 0.15
    low_contrast_strength: float = 0.3
    partners: tuple[tuple[str, str], ...] = PARTNER_PAIRS
    partner_prob: float = 0.6
    class_weights: tuple[float, ...] = ()
    caption_styles: tuple[str, ...] = STYLES
    detailed_order: str = "random"  # DETAILED_ORDERS
    relation_margin: float = 0.15  # fraction of image_size two centres must differ by to be related
    gap: int = 1  # minimum free pixels between two objects' boxes

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SceneConfig.{name}={getattr(self, name)!r}: {why}")

        if not 1 <= self.min_objects <= self.max_objects <= _MAX_OBJECTS_LIMIT:
            raise bad("max_objects", f"need 1 <= min_objects ({self.min_objects}) <= max_objects <= "
                                     f"{_MAX_OBJECTS_LIMIT}")
        if unknown := [c for c in self.classes if c not in SYNONYMS]:
            raise bad("classes", f"unknown classes {unknown}; known: {list(SYNONYMS)}")
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise bad("classes", "must be non-empty and without repeats")
        if unknown := [c for c in self.colors if c not in PALETTE]:
            raise bad("colors", f"unknown colours {unknown}; known: {list(PALETTE)}")
        if not self.colors:
            raise bad("colors", "must be non-empty")
        triggers = [a for a, _ in self.partners]
        partners = {b for _, b in self.partners}
        if any(a not in self.classes or b not in self.classes for a, b in self.partners):
            raise bad("partners", "every class in a pair must be in classes")
        if len(set(triggers)) != len(triggers) or partners & set(triggers) or any(a == b for a, b in self.partners):
            raise bad("partners", "each trigger needs one partner, and no partner may be a trigger")
        if self.class_weights and (len(self.class_weights) != len(self.classes) or min(self.class_weights) < 0
                                   or not sum(self.class_weights) > 0):
            raise bad("class_weights", f"need one weight >= 0 per class ({len(self.classes)}), with a positive sum")
        for name in ("small_share", "low_contrast_share", "low_contrast_strength", "partner_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "must lie in [0, 1]")
        if unknown := [s for s in self.caption_styles if s not in STYLES]:
            raise bad("caption_styles", f"unknown styles {unknown}; known: {list(STYLES)}")
        if self.detailed_order not in DETAILED_ORDERS:
            raise bad("detailed_order", f"one of {list(DETAILED_ORDERS)}")
        if not self.caption_styles:
            raise bad("caption_styles", "must be non-empty")
        if (smallest := self.side_range("small")[0]) < 3:
            raise bad("small_frac", f"gives {smallest}-px objects at image_size {self.image_size}; need >= 3 px")
        cell = self.image_size // self.grid_cols
        if max(self.side_range("small")[1], self.side_range("large")[1]) + self.gap > cell:
            raise bad("large_frac", f"objects must fit a {cell}-px grid cell (max_objects={self.max_objects}) "
                                    f"with a {self.gap}-px gap")

    @property
    def partner_of(self) -> dict[str, str]:
        """Trigger class -> its partner class."""
        return dict(self.partners)

    @property
    def grid_cols(self) -> int:
        """Columns (= rows) of the fallback grid that always fits max_objects large objects."""
        return math.ceil(math.sqrt(self.max_objects))

    def side_range(self, size: str) -> tuple[int, int]:
        """Inclusive pixel range of an object's side for size "small" or "large"."""
        lo, hi = self.small_frac if size == "small" else self.large_frac
        return max(1, round(lo * self.image_size)), max(1, round(hi * self.image_size))


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene. The shape touches all four sides of ``bbox``."""

    category: str
    color: str
    size: str  # "small" | "large"
    contrast: str  # "normal" | "low"
    bbox: tuple[int, int, int, int]  # x, y, w, h in pixels

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return x + w / 2, y + h / 2

    @property
    def attributes(self) -> dict[str, str]:
        """The COCO annotation attributes of this object."""
        return {"color": self.color, "size": self.size, "contrast": self.contrast}


@dataclass(frozen=True)
class Scene:
    """A square image's worth of non-overlapping objects."""

    image_size: int
    objects: tuple[SceneObject, ...]


def describe_object(obj: SceneObject) -> str:
    """Canonical noun phrase without article, e.g. ``"small red circle"``."""
    return f"{obj.size} {obj.color} {obj.category}"


def _offsets(a: SceneObject, b: SceneObject, margin_px: float) -> list[tuple[str, float]]:
    """Relations that hold for "a REL b", each with how far past the margin its centres differ."""
    (ax, ay), (bx, by) = a.center, b.center
    out = []
    if abs(ax - bx) > margin_px:
        out.append(("left of" if ax < bx else "right of", abs(ax - bx)))
    if abs(ay - by) > margin_px:
        out.append(("above" if ay < by else "below", abs(ay - by)))
    return out


def relations(scene: Scene, margin: float = 0.15) -> list[tuple[int, str, int]]:
    """Every ``(i, relation, j)`` with object i "left of"/"right of"/"above"/"below" object j.

    Judged from box centres (image y grows downwards); centres closer than ``margin *
    image_size`` along an axis give no relation on that axis, so a diagonal pair has two.
    """
    margin_px = margin * scene.image_size
    return [(i, rel, j)
            for i, a in enumerate(scene.objects) for j, b in enumerate(scene.objects) if i != j
            for rel, _ in _offsets(a, b, margin_px)]


def relation_between(a: SceneObject, b: SceneObject, image_size: int, margin: float = 0.15) -> str | None:
    """The clearest relation of "a REL b" (the axis where the centres differ most), or None."""
    found = _offsets(a, b, margin * image_size)
    return max(found, key=lambda r: r[1])[0] if found else None


def sample_scene(cfg: SceneConfig, rng: np.random.Generator) -> Scene:
    """Draw one scene: the number of objects, their classes (with the partner prior), attributes
    and non-overlapping positions. Deterministic given the generator's state."""
    partner_of = cfg.partner_of
    solo = [c for c in cfg.classes if c not in partner_of]
    weight = dict(zip(cfg.classes, cfg.class_weights))
    target = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    categories: list[str] = []
    while len(categories) < target:
        pool = cfg.classes if cfg.max_objects - len(categories) >= 2 else solo
        if weight and (p := np.array([weight[c] for c in pool])).sum() > 0:
            category = pool[rng.choice(len(pool), p=p / p.sum())]
        else:
            category = pool[rng.integers(len(pool))]
        categories.append(category)
        if category in partner_of and rng.random() < cfg.partner_prob:
            categories.append(partner_of[category])

    drafts = []
    for category in categories:
        color = cfg.colors[rng.integers(len(cfg.colors))]
        size = "small" if rng.random() < cfg.small_share else "large"
        contrast = "low" if rng.random() < cfg.low_contrast_share else "normal"
        lo, hi = cfg.side_range(size)
        side = int(rng.integers(lo, hi + 1))
        height = max(2, round(0.4 * side)) if category == "bar" else side
        drafts.append((category, color, size, contrast, side, height))
    positions = _place([(w, h) for *_, w, h in drafts], cfg, rng)
    objects = tuple(SceneObject(c, col, s, con, (x, y, w, h))
                    for (c, col, s, con, w, h), (x, y) in zip(drafts, positions, strict=True))
    return Scene(cfg.image_size, objects)


def _place(shapes: list[tuple[int, int]], cfg: SceneConfig, rng: np.random.Generator,
           attempts: int = 20) -> list[tuple[int, int]]:
    """Top-left corners for boxes of the given (w, h), at least ``cfg.gap`` px apart.

    Each box, largest first, goes to a position drawn uniformly from all free ones; if one finds
    no room, the layout starts over. After ``attempts`` failures the boxes go to distinct cells of
    a jittered grid, which always fits (the config guarantees it).
    """
    size, gap = cfg.image_size, cfg.gap
    order = sorted(range(len(shapes)), key=lambda k: -shapes[k][0] * shapes[k][1])
    for _ in range(attempts):
        placed: dict[int, tuple[int, int]] = {}
        for k in order:
            w, h = shapes[k]
            xs, ys = np.arange(size - w + 1), np.arange(size - h + 1)
            free = np.ones((len(ys), len(xs)), dtype=bool)  # (y, x) top-left candidates
            for j, (bx, by) in placed.items():
                bw, bh = shapes[j]
                x_clash = (xs < bx + bw + gap) & (bx < xs + w + gap)
                y_clash = (ys < by + bh + gap) & (by < ys + h + gap)
                free &= ~(y_clash[:, None] & x_clash[None, :])
            candidates = np.flatnonzero(free)
            if candidates.size == 0:
                break
            row, col = divmod(int(candidates[rng.integers(candidates.size)]), len(xs))
            placed[k] = (int(xs[col]), int(ys[row]))
        else:
            return [placed[k] for k in range(len(shapes))]
    return _place_on_grid(shapes, cfg, rng)


def _place_on_grid(shapes: list[tuple[int, int]], cfg: SceneConfig, rng: np.random.Generator) -> list[tuple[int, int]]:
    """One box per random cell of a ``grid_cols`` x ``grid_cols`` grid, jittered inside its cell."""
    cols = cfg.grid_cols
    cell = cfg.image_size // cols
    cells = rng.permutation(cols * cols)[:len(shapes)]
    positions = []
    for (w, h), c in zip(shapes, cells, strict=True):
        row, col = divmod(int(c), cols)
        x = col * cell + int(rng.integers(cell - cfg.gap - w + 1))
        y = row * cell + int(rng.integers(cell - cfg.gap - h + 1))
        positions.append((x, y))
    return positions
