"""The embedded default's building blocks: base-recipe cycles and scene splits that follow their spec."""

from __future__ import annotations

import json

import pytest
import torch

from halluremedy.errors import ConfigError
from halluremedy.models.llava import load_model
from halluremedy.pipeline import (
    SCENE_MARKER,
    SHIPPED_BASE,
    SHIPPED_LLAVA_BASE,
    BaseTrainSpec,
    SceneDataSpec,
    ensure_base_model,
    ensure_base_split,
    ensure_scene_data,
    format_cycles,
    parse_cycles,
    resolve_base,
    resolve_data,
    scene_data_spec,
    train_base_model,
)
from halluremedy.train.llava_recipe import LlavaRecipeSpec


def test_cycles_round_trip_and_bad_text():
    assert parse_cycles("3000:1.5e-3:4000,8000:1e-3:40000:0.5") == ((3000, 1.5e-3, 4000, 0.0), (8000, 1e-3, 40000, 0.5))
    assert parse_cycles(format_cycles(BaseTrainSpec().cycles)) == BaseTrainSpec().cycles
    assert format_cycles(((5, 1e-3, 8), (6, 2e-3, 9, 0.25))) == "5:0.001:8,6:0.002:9:0.25"
    assert BaseTrainSpec(cycles=((5, 1e-3, 8),)).cycles == ((5, 1e-3, 8, 0.0),)
    assert BaseTrainSpec().steps == sum(c[0] for c in BaseTrainSpec.cycles)
    assert BaseTrainSpec().scenes == max(c[2] for c in BaseTrainSpec.cycles)
    for bad in ("", "3000", "3000:1e-3", "3000:x:10", "0:1e-3:10", "10:1e-3:0", "10:1e-3:10,", "10:1e-3:10:1.5",
                "10:1e-3:10:0.5:1"):
        with pytest.raises(ValueError, match="cycle"):
            parse_cycles(bad)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return ensure_base_split(tmp_path_factory.mktemp("scenes"), 12)


def test_two_cycles_equal_a_cycle_then_a_continued_cycle(scenes, tmp_path):
    kwargs = dict(batch_size=4, seed=0)
    two = BaseTrainSpec(cycles=((3, 2e-3, 8), (2, 1e-3, 12, 0.5)), **kwargs)  # the second noises half its images
    both = train_base_model(scenes, tmp_path / "both", two)
    first = train_base_model(scenes.head(8), tmp_path / "first", BaseTrainSpec(cycles=((3, 2e-3, 8),), **kwargs))
    then = train_base_model(scenes, tmp_path / "then", BaseTrainSpec(cycles=((2, 1e-3, 12, 0.5),), **kwargs), init=first)
    a, b = load_model(both)[0].state_dict(), load_model(then)[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert (tmp_path / "both" / "cycle0" / "model" / "config.json").exists()
    assert not all(torch.equal(a[k], load_model(first)[0].state_dict()[k]) for k in a)  # cycle 2 trained

    # resuming skips finished cycles (their models are reused, not retrained)
    mtime = (tmp_path / "both" / "cycle1" / "model" / "model.safetensors").stat().st_mtime
    train_base_model(scenes, tmp_path / "both", two, resume=True)
    assert (tmp_path / "both" / "cycle1" / "model" / "model.safetensors").stat().st_mtime == mtime


def test_scene_splits_follow_their_spec(scenes, tmp_path):
    _, small = ensure_scene_data(tmp_path, SceneDataSpec(n_train=6, n_heldout=4))
    train, large = ensure_scene_data(tmp_path, SceneDataSpec(n_train=6, n_heldout=6))
    assert len(small) == 4 and len(large) == 6  # resized, as an extension
    assert [(a.objects, a.captions) for a in small.images] == [(a.objects, a.captions) for a in large.images[:4]]
    # the training split is the head of the base split's scene stream
    assert [(a.objects, a.captions) for a in train.images] == [(a.objects, a.captions) for a in scenes.images[:6]]
    with pytest.raises(ValueError, match="first 13 of 12"):
        scenes.head(13)


def test_a_split_made_from_another_world_is_remade_not_reused(tmp_path):
    random_order, _ = ensure_scene_data(tmp_path, SceneDataSpec(n_train=12, n_heldout=4))
    assert random_order.info["scene_world"]["config"]["detailed_order"] == "random"
    reading, _ = ensure_scene_data(tmp_path, SceneDataSpec(n_train=12, n_heldout=4, detailed_order="reading"))
    assert reading.info["scene_world"]["config"]["detailed_order"] == "reading"
    assert [a.objects for a in reading.images] == [a.objects for a in random_order.images]  # same scenes
    assert [a.captions for a in reading.images] != [a.captions for a in random_order.images]  # named in order
    noisier, _ = ensure_scene_data(tmp_path, SceneDataSpec(n_train=12, n_heldout=4, caption_noise=1.0,
                                                           detailed_order="reading"))
    assert noisier.info["scene_world"]["caption_noise"] == 1.0
    # a split with no record (made by an older version) is remade too
    path = tmp_path / "annotations" / "instances_train.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in record.items() if k != "info"}))
    again, _ = ensure_scene_data(tmp_path, SceneDataSpec(n_train=12, n_heldout=4, caption_noise=1.0,
                                                         detailed_order="reading"))
    assert again.info == noisier.info and [a.captions for a in again.images] == [a.captions for a in noisier.images]
    # each base kind reads the world in the order it learnt
    assert scene_data_spec("perception-limited").detailed_order == "random"
    assert scene_data_spec("llava-like").detailed_order == LlavaRecipeSpec().detailed_order
    with pytest.raises(ConfigError, match="option '--base'"):
        scene_data_spec("clip")


def test_a_base_made_by_another_recipe_is_refused_not_reused(tmp_path):
    path = ensure_base_model(tmp_path / "data", tmp_path / "base")  # the default recipe: the shipped copy
    assert (path / "model.safetensors").read_bytes() == (SHIPPED_BASE / "model.safetensors").read_bytes()
    assert ensure_base_model(tmp_path / "data", tmp_path / "base") == path  # same recipe: reused
    with pytest.raises(ValueError, match="another recipe"):
        ensure_base_model(tmp_path / "data", tmp_path / "base", BaseTrainSpec(cycles=((5, 1e-3, 8),)))
    (tmp_path / "base" / "base_recipe.json").unlink()  # e.g. left by an older version
    with pytest.raises(ValueError, match="unrecorded recipe"):
        ensure_base_model(tmp_path / "data", tmp_path / "base")
    assert not (tmp_path / "data").exists()  # nothing was generated or trained


def test_each_base_kind_resolves_to_its_shipped_model(tmp_path):
    # the LLaVA-like base's default recipe is what the asset was made by: it is copied, never trained
    kinds = {"llava-like": SHIPPED_LLAVA_BASE, "perception-limited": SHIPPED_BASE}
    for kind, shipped in kinds.items():
        path = resolve_base("", str(tmp_path / "data"), base=kind, base_out=tmp_path / kind,
                            base_cycles=format_cycles(BaseTrainSpec.cycles), scene_train_images=6,
                            scene_heldout_images=4)
        assert path == tmp_path / kind / "model"
        assert (path / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()
        assert json.loads((tmp_path / kind / "base_recipe.json").read_text()).get("kind", kind) == kind
    with pytest.raises(ConfigError, match="another recipe"):  # one kind's folder is not the other's
        resolve_base("", str(tmp_path / "data"), base="llava-like", base_out=tmp_path / "perception-limited",
                     base_cycles="", scene_train_images=6, scene_heldout_images=4)
    with pytest.raises(ConfigError, match="option '--base': one of llava-like, perception-limited"):
        resolve_base("", str(tmp_path / "data"), base="clip", base_out=tmp_path / "x", base_cycles="",
                     scene_train_images=6, scene_heldout_images=4)
    assert not (tmp_path / "data").exists()  # nothing was generated or trained


def test_embedded_default_never_writes_into_a_users_folder(tiny_coco, tmp_path):
    # ``train_dpo.py --data MY_COCO`` without --model used to regenerate MY_COCO's train/val in place
    before = {p: p.read_bytes() for p in tiny_coco.root.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"coco is not a scene world made by the embedded default .* pass --model"):
        ensure_scene_data(tiny_coco.root, SceneDataSpec(n_train=6, n_heldout=4))
    with pytest.raises(ConfigError, match=r"option '--data': .*coco is not a scene world"):
        resolve_data("", str(tiny_coco.root), "train", "val", base="llava-like", scene_train_images=6, scene_heldout_images=4)
    assert {p: p.read_bytes() for p in tiny_coco.root.rglob("*") if p.is_file()} == before

    # a new folder becomes the default's own (marker), and is reused and resized as before
    train, heldout = resolve_data("", str(tmp_path / "scenes"), "train", "val", base="llava-like", scene_train_images=6,
                                  scene_heldout_images=4)
    assert (tmp_path / "scenes" / SCENE_MARKER).is_file() and (len(train), len(heldout)) == (6, 4)
    assert len(ensure_scene_data(tmp_path / "scenes", SceneDataSpec(n_train=8, n_heldout=4))[0]) == 8


@pytest.mark.parametrize("split, eval_split, option", [("mysplit", "val", "--split"), ("train", "myval", "--eval-split")])
def test_embedded_default_refuses_splits_it_does_not_have(tmp_path, split, eval_split, option):
    # they used to be ignored: the default trained on its own 'train' and evaluated on its 'val'
    with pytest.raises(ConfigError, match=rf"option '{option}': the embedded default \(no --model\) trains on its own"):
        resolve_data("", str(tmp_path / "scenes"), split, eval_split, base="llava-like", scene_train_images=6,
                     scene_heldout_images=4)
    assert not (tmp_path / "scenes").exists()
