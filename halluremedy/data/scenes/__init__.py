"""The scene world: a seeded procedural image world whose contents are known exactly.

Each image holds 1-4 coloured shapes (``CLASSES``) of a size ("small" | "large") and a contrast
("normal" | "low"), placed without overlap; relations ("left of", "right of", "above", "below")
follow from box centres. Class choice has a co-occurrence prior (``PARTNERS``: a trigger brings
its partner along with ``SceneConfig.partner_prob``), and training captions can carry noise that
mentions an absent partner - the language prior preference tuning should unlearn. Small and
low-contrast objects are the perceptual hard cases it cannot fix.

``make_dataset`` writes a split in COCO format for ``halluremedy.data.coco.CocoDataset``; the CLI
does the same::

    python -m halluremedy.data.scenes --out data/scenes --split train --n 2000 --seed 0 --caption-noise 0.25
    python -m halluremedy.data.scenes --out data/scenes --split val --n 500 --seed 1
"""

from halluremedy.data.scenes.captions import (
                                              NUMBER_WORDS,
                                              Caption,
                                              Phantom,
                                              caption_scene,
                                              make_captions,
                                              plural,
                                              sample_phantom,
                                              scene_text_vocabulary,
)
from halluremedy.data.scenes.dataset import make_dataset, scene_world_record
from halluremedy.data.scenes.render import object_rgb, render, shape_alpha
from halluremedy.data.scenes.world import (
                                              CLASSES,
                                              COLORS,
                                              CONTRASTS,
                                              PALETTE,
                                              PARTNER_PAIRS,
                                              PARTNERS,
                                              RELATIONS,
                                              SIZES,
                                              STYLES,
                                              SYNONYMS,
                                              Scene,
                                              SceneConfig,
                                              SceneObject,
                                              describe_object,
                                              relation_between,
                                              relations,
                                              sample_scene,
)

__all__ = ["CLASSES", "COLORS", "CONTRASTS", "PALETTE", "PARTNER_PAIRS", "PARTNERS", "RELATIONS", "SIZES",
           "SYNONYMS", "STYLES", "NUMBER_WORDS", "SceneConfig", "Scene", "SceneObject", "Phantom", "Caption",
           "sample_scene", "relations", "relation_between", "describe_object", "render", "shape_alpha",
           "object_rgb", "plural", "sample_phantom", "caption_scene", "make_captions", "scene_text_vocabulary",
           "make_dataset", "scene_world_record"]
