"""Tests of the scene world: sampling, rendering, captions with noise, and the COCO dataset."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import halluremedy.data.scenes.world as world
from halluremedy.data.coco import CocoDataset
from halluremedy.data.scenes import (
    CLASSES,
    PALETTE,
    PARTNER_PAIRS,
    PARTNERS,
    SYNONYMS,
    Scene,
    SceneConfig,
    SceneObject,
    caption_scene,
    describe_object,
    make_captions,
    make_dataset,
    plural,
    relation_between,
    relations,
    render,
    sample_scene,
    scene_text_vocabulary,
    shape_alpha,
)
from halluremedy.data.scenes.__main__ import main as cli_main
from halluremedy.data.scenes.__main__ import parse_class_weights

CFG = SceneConfig()


def scenes(n: int, seed: int = 0, cfg: SceneConfig = CFG) -> list[Scene]:
    return [sample_scene(cfg, np.random.default_rng([seed, i, 0])) for i in range(n)]


_SURFACE = {tuple(form.split()): category for category, nouns in SYNONYMS.items()
            for noun in nouns for form in (noun, plural(noun))}


def mentioned(caption: str) -> set[str]:
    """Classes a caption names, parsing synonyms, plurals and two-word nouns (as CHAIR would)."""
    words = re.findall(r"[a-z]+", caption)
    found, i = set(), 0
    while i < len(words):
        for span in (2, 1):
            if tuple(words[i:i + span]) in _SURFACE:
                found.add(_SURFACE[tuple(words[i:i + span])])
                i += span
                break
        else:
            i += 1
    return found


def absent_partners(scene: Scene) -> set[str]:
    present = {o.category for o in scene.objects}
    return {PARTNERS[c] for c in present if c in PARTNERS} - present


def test_same_seed_gives_same_scene_image_and_captions():
    for i in range(20):
        a, b = (sample_scene(CFG, np.random.default_rng([3, i, 0])) for _ in range(2))
        assert a == b
        assert render(a, CFG).tobytes() == render(b, CFG).tobytes()
        caps = [make_captions(a, CFG, np.random.default_rng([3, i, 1]), 4, 0.5) for _ in range(2)]
        assert caps[0] == caps[1]


def test_different_seeds_give_different_scenes():
    assert scenes(20, seed=0) != scenes(20, seed=1)
    assert len({s.objects for s in scenes(50)}) == 50


@pytest.mark.parametrize("cfg", [CFG, SceneConfig(image_size=64),
                                 # boxes so large that random placement often fails and the grid fallback runs
                                 SceneConfig(min_objects=4, small_share=0.0, large_frac=(0.44, 0.47))])
def test_objects_are_inside_the_image_and_never_overlap(cfg, monkeypatch):
    fallbacks = []
    grid = world._place_on_grid
    monkeypatch.setattr(world, "_place_on_grid", lambda *a: fallbacks.append(1) or grid(*a))
    for scene in scenes(500, cfg=cfg):
        assert cfg.min_objects <= len(scene.objects) <= cfg.max_objects
        for k, a in enumerate(scene.objects):
            x, y, w, h = a.bbox
            assert 0 <= x and 0 <= y and x + w <= cfg.image_size and y + h <= cfg.image_size
            lo, hi = cfg.side_range(a.size)
            assert lo <= w <= hi
            for b in scene.objects[k + 1:]:
                bx, by, bw, bh = b.bbox
                apart_x = x + w + cfg.gap <= bx or bx + bw + cfg.gap <= x
                apart_y = y + h + cfg.gap <= by or by + bh + cfg.gap <= y
                assert apart_x or apart_y, (a, b)
    if cfg.large_frac == (0.44, 0.47):
        assert fallbacks, "the grid fallback was not exercised"


def test_partner_cooccurrence_follows_partner_prob():
    """P(B | A) = p + (1 - p) * (B's chance to be drawn on its own, ~ P(B | not A))."""
    present = [{o.category for o in s.objects} for s in scenes(4000, seed=7)]
    for a, b in PARTNER_PAIRS:
        with_a = [s for s in present if a in s]
        without_a = [s for s in present if a not in s]
        p_b_given_a = np.mean([b in s for s in with_a])
        p_b_otherwise = np.mean([b in s for s in without_a])
        assert len(with_a) > 500
        assert p_b_given_a == pytest.approx(CFG.partner_prob + (1 - CFG.partner_prob) * p_b_otherwise, abs=0.06)
    always = [{o.category for o in s.objects} for s in scenes(500, cfg=SceneConfig(partner_prob=1.0))]
    assert all(b in s for s in always for a, b in PARTNER_PAIRS if a in s)


def test_class_weights_shift_class_frequency_and_empty_weights_keep_the_stream():
    uniform = scenes(300, seed=5)
    assert uniform == scenes(300, seed=5, cfg=SceneConfig(class_weights=()))
    favoured = ("circle", "square")
    weights = tuple(10.0 if c in favoured else 1.0 for c in CLASSES)
    weighted = scenes(2000, seed=5, cfg=SceneConfig(class_weights=weights))
    drawn = [o.category for s in weighted for o in s.objects]
    share = sum(c in favoured for c in drawn) / len(drawn)
    # circle also arrives as arrow's partner; without partners it would be 20/28 of the draws
    assert 0.6 < share < 0.85
    none_of = tuple(0.0 if c == "bar" else 1.0 for c in CLASSES)
    assert all(o.category != "bar" for s in scenes(500, cfg=SceneConfig(class_weights=none_of)) for o in s.objects)
    for bad in ((1.0,) * (len(CLASSES) - 1), (0.0,) * len(CLASSES), (-1.0,) + (1.0,) * (len(CLASSES) - 1)):
        with pytest.raises(ValueError, match="class_weights"):
            SceneConfig(class_weights=bad)


def test_clean_captions_mention_exactly_the_present_classes():
    for i, scene in enumerate(scenes(500)):
        for cap in make_captions(scene, CFG, np.random.default_rng([0, i, 1]), 4, caption_noise=0.0):
            assert cap.phantom is None
            assert mentioned(cap.text) == {o.category for o in scene.objects}, cap.text


def test_noise_share_matches_caption_noise_and_names_only_absent_partners():
    eligible = noisy = 0
    for i, scene in enumerate(scenes(3000, seed=5)):
        present = {o.category for o in scene.objects}
        for cap in make_captions(scene, CFG, np.random.default_rng([5, i, 1]), 2, caption_noise=0.3):
            extra = mentioned(cap.text) - present
            if absent_partners(scene):
                eligible += 1
            else:
                assert cap.phantom is None
            if cap.phantom is not None:
                noisy += 1
                assert extra == {cap.phantom.category}, cap.text
                assert cap.phantom.category in absent_partners(scene)
                assert PARTNERS[scene.objects[cap.phantom.anchor].category] == cap.phantom.category
            else:
                assert not extra, cap.text
    assert eligible > 600
    assert noisy / eligible == pytest.approx(0.3, abs=0.04)


def test_captions_use_plurals_and_number_words_for_repeated_objects():
    two_red_circles = Scene(32, (SceneObject("circle", "red", "large", "normal", (0, 0, 12, 12)),
                                 SceneObject("circle", "red", "large", "normal", (20, 20, 12, 12))))
    for seed in range(10):
        text = caption_scene(two_red_circles, "short", np.random.default_rng(seed))
        assert re.fullmatch(r"two red (circles|discs|dots)\.", text), text


def test_vocabulary_covers_every_generated_word():
    vocabulary = set(scene_text_vocabulary())
    crowded = SceneConfig(image_size=64, min_objects=6, max_objects=9, classes=("circle", "star", "crescent"),
                          colors=("red",), partners=(("star", "crescent"),), small_share=1.0,
                          large_frac=(0.2, 0.3))  # many same-class objects: counts up to "nine"
    for cfg in (CFG, crowded):
        for i, scene in enumerate(scenes(400, cfg=cfg)):
            for cap in make_captions(scene, cfg, np.random.default_rng(i), 4, caption_noise=0.5):
                words = re.findall(r"[a-z]+|[^\sa-z]", cap.text)
                assert set(words) <= vocabulary, (cap.text, set(words) - vocabulary)
            assert all(set(describe_object(o).split()) <= vocabulary for o in scene.objects)


def test_relations_on_a_hand_built_scene():
    left_top = SceneObject("circle", "red", "large", "normal", (0, 0, 10, 10))      # centre (5, 5)
    right_top = SceneObject("square", "blue", "large", "normal", (20, 1, 10, 10))   # centre (25, 6): same row
    left_low = SceneObject("star", "green", "small", "low", (2, 22, 6, 6))          # centre (5, 25): same column
    scene = Scene(32, (left_top, right_top, left_low))
    assert set(relations(scene)) == {
        (0, "left of", 1), (1, "right of", 0),
        (0, "above", 2), (2, "below", 0),
        (1, "right of", 2), (1, "above", 2), (2, "left of", 1), (2, "below", 1),
    }
    assert relation_between(right_top, left_low, 32) == "right of"  # dx 20 beats dy 19
    assert relation_between(left_top, right_top, 32) == "left of"
    assert relation_between(left_top, left_top, 32) is None


@pytest.mark.parametrize("category", CLASSES)
@pytest.mark.parametrize("size, side", [("large", 13), ("small", 6)])
def test_render_draws_the_colour_inside_the_bbox_only(category, size, side):
    height = max(2, round(0.4 * side)) if category == "bar" else side
    obj = SceneObject(category, "blue", size, "normal", (9, 5, side, height))
    image = np.asarray(render(Scene(32, (obj,)), CFG)).astype(int)
    x, y, w, h = obj.bbox
    inside = np.zeros((32, 32), dtype=bool)
    inside[y:y + h, x:x + w] = True
    assert (image[~inside] == CFG.background).all()
    assert (np.abs(image[inside] - PALETTE["blue"]).max(axis=1) <= 1).any()
    alpha = shape_alpha(category, w, h)
    assert min(alpha[0].max(), alpha[-1].max(), alpha[:, 0].max(), alpha[:, -1].max()) > 0  # touches all sides


def test_low_contrast_objects_are_drawn_close_to_the_background():
    obj = SceneObject("square", "white", "large", "low", (4, 4, 12, 12))
    image = np.asarray(render(Scene(32, (obj,)), CFG)).astype(float)
    expected = np.add(CFG.background, CFG.low_contrast_strength * np.subtract(PALETTE["white"], CFG.background))
    assert np.abs(image[10, 10] - expected).max() <= 0.5


def test_make_dataset_round_trips_through_coco_loader(tmp_path):
    cfg = SceneConfig()
    data = make_dataset(tmp_path, "train", 30, seed=2, cfg=cfg, caption_noise=0.5, captions_per_image=3,
                        progress=False)
    assert isinstance(data, CocoDataset) and len(data) == 30
    again = CocoDataset.load(tmp_path, "train", require_captions=True)
    assert again.images == data.images
    assert data.categories == list(cfg.classes)
    assert data.synonyms == {c: list(SYNONYMS[c]) for c in cfg.classes}
    for i, image in enumerate(data.images):
        scene = sample_scene(cfg, np.random.default_rng([2, i, 0]))
        captions = make_captions(scene, cfg, np.random.default_rng([2, i, 1]), 3, 0.5)
        assert image.image_id == i + 1 and (image.width, image.height) == (32, 32)
        assert [(o.category, o.bbox, o.attributes) for o in image.objects] == \
               [(o.category, tuple(map(float, o.bbox)), o.attributes) for o in scene.objects]
        assert image.captions == tuple(c.text for c in captions)
        assert data.load_image(image).tobytes() == render(scene, cfg).tobytes()


def test_make_dataset_is_a_pure_function_of_the_seed(tmp_path):
    for run in ("a", "b"):
        make_dataset(tmp_path / run, "val", 12, seed=9, progress=False)
    for name in ("instances_val.json", "captions_val.json"):
        assert json.loads((tmp_path / "a/annotations" / name).read_text()) == \
               json.loads((tmp_path / "b/annotations" / name).read_text())
    clean = make_dataset(tmp_path / "c", "val", 12, seed=9, progress=False)
    noisy = make_dataset(tmp_path / "d", "val", 20, seed=9, caption_noise=1.0, progress=False)
    assert [im.objects for im in noisy.images[:12]] == [im.objects for im in clean.images]  # noise never moves objects


def test_cli_writes_a_split(tmp_path, capsys):
    cli_main(["--out", str(tmp_path), "--split", "train", "--n", "5", "--seed", "0", "--caption-noise", "0.25"])
    data = CocoDataset.load(tmp_path, "train", require_captions=True)
    assert len(data) == 5 and all(len(im.captions) == 2 for im in data.images)
    cli_main(["--out", str(tmp_path), "--split", "read", "--n", "5", "--seed", "0", "--caption-noise", "0.25",
              "--detailed-order", "reading"])
    reading = CocoDataset.load(tmp_path, "read", require_captions=True)
    expected = [make_captions(scene, SceneConfig(detailed_order="reading"), np.random.default_rng([0, i, 1]), 2, 0.25)
                for i, scene in enumerate(scenes(5))]
    assert [list(im.captions) for im in reading.images] == [[c.text for c in caps] for caps in expected]
    assert [im.captions for im in reading.images] != [im.captions for im in data.images]


def test_cli_class_weights_leave_out_classes(tmp_path):
    cli_main(["--out", str(tmp_path), "--split", "base", "--n", "60", "--seed", "0", "--class-weights", "cross=0, bar=0"])
    data = CocoDataset.load(tmp_path, "base")
    drawn = {obj.category for im in data.images for obj in im.objects}
    assert drawn == set(CLASSES) - {"cross", "bar"}
    assert parse_class_weights("") == ()
    assert parse_class_weights("star=2") == tuple(2.0 if c == "star" else 1.0 for c in CLASSES)
    for bad in ("hexagon=1", "star"):
        with pytest.raises(ValueError, match="--class-weights"):
            parse_class_weights(bad)


@pytest.mark.parametrize("kwargs, field", [
    ({"classes": ("circle", "hexagon")}, "classes"),
    ({"colors": ("red", "mauve")}, "colors"),
    ({"min_objects": 3, "max_objects": 2}, "max_objects"),
    ({"partners": (("star", "crescent"), ("crescent", "ring"))}, "partners"),
    ({"partner_prob": 1.5}, "partner_prob"),
    ({"large_frac": (0.5, 0.6)}, "large_frac"),
    ({"caption_styles": ("haiku",)}, "caption_styles"),
    ({"detailed_order": "salience"}, "detailed_order"),
])
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"SceneConfig.{field}"):
        SceneConfig(**kwargs)


def test_extra_noise_adds_an_absent_object_last_and_noise_styles_restrict_it():
    from halluremedy.eval.chair import ObjectVocabulary

    vocab = ObjectVocabulary.from_synonyms(SYNONYMS)
    cfg = SceneConfig()
    extras = 0
    for i in range(60):
        scene = sample_scene(cfg, np.random.default_rng([9, i, 0]))
        present = {o.category for o in scene.objects}
        # extra_noise=0 keeps the earlier stream exactly
        assert make_captions(scene, cfg, np.random.default_rng([9, i, 1]), 2, 0.5) == \
            make_captions(scene, cfg, np.random.default_rng([9, i, 1]), 2, 0.5, extra_noise=0.0)
        caps = make_captions(scene, cfg, np.random.default_rng([9, i, 1]), 2, 0.0, extra_noise=1.0,
                             noise_styles=("detailed",))
        short, detailed = caps
        assert short.phantom is None and {m.category for m in vocab.extract_mentions(short.text)} <= present
        mentions = [m.category for m in vocab.extract_mentions(detailed.text)]
        if len(present) < len(cfg.classes):
            extras += 1
            assert detailed.phantom is not None and detailed.phantom.anchor == -1
            assert mentions[-1] == detailed.phantom.category not in present and set(mentions[:-1]) <= present
            assert detailed.text.split(".")[-2].startswith(" there is also")
    assert extras == 60


def test_reading_order_names_objects_left_to_right_and_keeps_the_random_stream():
    from halluremedy.eval.chair import ObjectVocabulary

    vocab = ObjectVocabulary.from_synonyms(SYNONYMS)
    multi = 0
    for i, scene in enumerate(scenes(200, seed=4)):
        kwargs = dict(caption_noise=0.5, extra_noise=0.5, noise_styles=("detailed",))
        random_caps = make_captions(scene, CFG, np.random.default_rng([4, i, 1]), 2, **kwargs)
        reading_caps = make_captions(scene, SceneConfig(detailed_order="reading"), np.random.default_rng([4, i, 1]), 2,
                                     **kwargs)
        assert reading_caps[0] == random_caps[0]  # the short caption is untouched
        random_detailed, detailed = random_caps[1], reading_caps[1]
        assert detailed.phantom == random_detailed.phantom and mentioned(detailed.text) == mentioned(random_detailed.text)
        left_to_right = [o.category for o in sorted(scene.objects, key=lambda o: o.center)]
        n_named = len(scene.objects)
        named = [m.category for m in vocab.extract_mentions(detailed.text)]
        first_seen = list(dict.fromkeys(named))
        expected = list(dict.fromkeys(left_to_right))
        assert first_seen[:len(expected)] == expected, (detailed.text, left_to_right)
        multi += n_named > 2
    assert multi > 50
    with pytest.raises(ValueError, match="detailed_order"):
        caption_scene(scenes(1)[0], "detailed", np.random.default_rng(0), detailed_order="salience")
