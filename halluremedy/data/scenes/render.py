"""Drawing scenes: anti-aliased shape masks composited onto a plain background with numpy."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image

from halluremedy.data.scenes.world import PALETTE, Scene, SceneConfig, SceneObject

__all__ = ["SHAPE_MASKS", "shape_alpha", "object_rgb", "render"]

_SUPERSAMPLE = 4  # sub-samples per pixel side for anti-aliasing

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _star(u: np.ndarray, v: np.ndarray, inner: float = 0.45) -> np.ndarray:
    """Five-pointed star, one point up, stretched so its points touch the box sides."""
    x = u * math.cos(math.radians(18))  # the side points reach x = +-cos 18
    y = 1 - (v + 1) / 2 * (1 + math.cos(math.radians(36)))  # y up; top point 1, bottom points -cos 36
    theta = np.degrees(np.arctan2(x, y)) % 72  # angle from the nearest point (clockwise), folded
    psi = np.radians(np.abs(theta - 36))  # 0 at an inner corner, 36 degrees at a point
    rho = np.hypot(x, y)
    px, py = rho * np.cos(psi), rho * np.sin(psi)
    ax, bx, by = inner, math.cos(math.radians(36)), math.sin(math.radians(36))
    return (bx - ax) * py - by * (px - ax) >= 0  # origin side of the edge inner corner -> point


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unit disc minus a disc of radius 0.8 centred at (0.5, 0), opening right; the tips lie at
    x = 0.61, so x in [-1, 0.61] is stretched over the box."""
    x = -1 + (u + 1) / 2 * 1.61
    return (x ** 2 + v ** 2 <= 1) & ((x - 0.5) ** 2 + v ** 2 > 0.64)


# Class -> mask over box coordinates u (right) and v (down), both spanning [-1, 1].
SHAPE_MASKS: dict[str, Mask] = {
    "circle": lambda u, v: u ** 2 + v ** 2 <= 1,
    "square": lambda u, v: np.ones_like(u, dtype=bool),
    "triangle": lambda u, v: np.abs(u) <= (v + 1) / 2,  # point up
    "cross": lambda u, v: (np.abs(u) <= 1 / 3) | (np.abs(v) <= 1 / 3),
    "ring": lambda u, v: (u ** 2 + v ** 2 <= 1) & (u ** 2 + v ** 2 >= 0.5 ** 2),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1,
    "bar": lambda u, v: np.ones_like(u, dtype=bool),  # the box itself is wide
    "star": _star,
    "crescent": _crescent,
    "arrow": lambda u, v: ((u <= 0) & (np.abs(v) <= 0.3)) | ((u >= 0) & (np.abs(v) <= 1 - u)),  # points right
}


@lru_cache(maxsize=4096)
def shape_alpha(category: str, width: int, height: int) -> np.ndarray:
    """Coverage in [0, 1] of each pixel of a ``width`` x ``height`` box by the shape, (h, w).

    Cached and read-only: scenes reuse few distinct box sizes.
    """
    n = _SUPERSAMPLE
    u = (np.arange(width * n) + 0.5) / (width * n) * 2 - 1
    v = (np.arange(height * n) + 0.5) / (height * n) * 2 - 1
    mask = SHAPE_MASKS[category](u[None, :], v[:, None])  # (h*n, w*n)
    mask = np.broadcast_to(mask, (height * n, width * n))
    alpha = mask.reshape(height, n, width, n).mean(axis=(1, 3), dtype=np.float32)
    alpha.flags.writeable = False
    return alpha


def object_rgb(obj: SceneObject, cfg: SceneConfig) -> np.ndarray:
    """The (3,) float colour an object is drawn in; a low-contrast one is pulled towards the
    background, keeping ``cfg.low_contrast_strength`` of the difference."""
    rgb = np.asarray(PALETTE[obj.color], dtype=np.float32)
    if obj.contrast == "low":
        background = np.asarray(cfg.background, dtype=np.float32)
        rgb = background + cfg.low_contrast_strength * (rgb - background)
    return rgb


def render(scene: Scene, cfg: SceneConfig) -> Image.Image:
    """Draw a scene as an RGB image of ``scene.image_size`` px; deterministic."""
    size = scene.image_size
    canvas = np.empty((size, size, 3), dtype=np.float32)  # (H, W, 3)
    canvas[:] = cfg.background
    for obj in scene.objects:
        x, y, w, h = obj.bbox
        alpha = shape_alpha(obj.category, w, h)[:, :, None]  # (h, w, 1)
        region = canvas[y:y + h, x:x + w]
        region[:] = alpha * object_rgb(obj, cfg) + (1 - alpha) * region
    return Image.fromarray(np.round(canvas).astype(np.uint8), "RGB")
