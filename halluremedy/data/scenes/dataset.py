"""Writing a scene-world split to disk as a COCO-format dataset."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from halluremedy.data.coco import CocoDataset, write_coco
from halluremedy.data.scenes.captions import make_captions
from halluremedy.data.scenes.render import render
from halluremedy.data.scenes.world import SYNONYMS, SceneConfig, sample_scene

__all__ = ["make_dataset", "scene_world_record"]

log = logging.getLogger(__name__)


def scene_world_record(seed: int, cfg: SceneConfig, caption_noise: float, captions_per_image: int = 2) -> dict:
    """What makes a split's image i (beside i): stored as its instances file's ``info["scene_world"]``, so
    a split made otherwise (another seed, noise or caption order) is told apart from one to reuse."""
    return {"seed": seed, "caption_noise": caption_noise, "captions_per_image": captions_per_image,
            "config": json.loads(json.dumps(dataclasses.asdict(cfg)))}


def make_dataset(root: str | os.PathLike, split: str, n_images: int, seed: int, cfg: SceneConfig = SceneConfig(),
                 caption_noise: float = 0.0, captions_per_image: int = 2, *, progress: bool = True) -> CocoDataset:
    """Generate ``n_images`` scenes and write them as the COCO split ``split`` under ``root``.

    Writes ``ROOT/{split}/{split}_{image_id:06d}.png``, ``ROOT/annotations/instances_{split}.json``
    (annotations carry ``attributes`` {"color", "size", "contrast"}; categories carry the caption
    ``synonyms``) and ``ROOT/annotations/captions_{split}.json`` (``captions_per_image`` per image,
    caption k in style ``cfg.caption_styles[k % len]``). Returns the split as loaded back.

    Image i is a pure function of ``(seed, i)``: scene and captions come from separate generators
    seeded with ``[seed, i, 0]`` and ``[seed, i, 1]``, so a larger ``n_images`` extends a smaller
    one and ``caption_noise`` never changes an image. Give train and held-out splits different seeds.

    ``caption_noise`` is the share of eligible captions (those of images with a present trigger
    whose partner is absent) that mention that absent partner; see ``make_captions``. Held-out and
    evaluation splits must use ``caption_noise=0``: CHAIR counts objects parsed from the reference
    captions as ground truth, so a noisy reference would excuse the very hallucination it measures.
    """
    if n_images < 0 or seed < 0 or captions_per_image < 1:
        raise ValueError(f"need n_images >= 0, seed >= 0, captions_per_image >= 1; got {n_images}, {seed}, "
                         f"{captions_per_image}")
    root = Path(root)
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, int, int]] = []
    annotations: list[tuple[int, str, tuple[int, int, int, int], dict[str, str]]] = []
    captions: list[tuple[int, str]] = []
    n_noisy = 0
    for i in tqdm(range(n_images), desc=f"scenes/{split}", unit="img", disable=not progress):
        image_id = i + 1
        scene = sample_scene(cfg, np.random.default_rng([seed, i, 0]))
        file_name = f"{split}_{image_id:06d}.png"
        render(scene, cfg).save(image_dir / file_name)
        images.append((file_name, cfg.image_size, cfg.image_size))
        annotations.extend((image_id, o.category, o.bbox, o.attributes) for o in scene.objects)
        for caption in make_captions(scene, cfg, np.random.default_rng([seed, i, 1]), captions_per_image,
                                     caption_noise):
            captions.append((image_id, caption.text))
            n_noisy += caption.phantom is not None
    write_coco(root, split, images, cfg.classes, annotations, captions,
               synonyms={c: list(SYNONYMS[c]) for c in cfg.classes},
               info={"scene_world": scene_world_record(seed, cfg, caption_noise, captions_per_image)})
    log.info("scenes/%s: %d images, %d objects, %d captions (%d noisy) in %s", split, len(images),
             len(annotations), len(captions), n_noisy, root)
    return CocoDataset.load(root, split, require_captions=True)
