"""The embedded default's building blocks: base-recipe cycles and scene splits that follow their spec."""

from __future__ import annotations

import pytest
import torch

from halluremedy.models.llava import load_model
from halluremedy.pipeline import (
    BaseTrainSpec,
    SceneDataSpec,
    ensure_scene_data,
    format_cycles,
    parse_cycles,
    train_base_model,
)


def test_cycles_round_trip_and_bad_text():
    assert parse_cycles("3000:1.5e-3,8000:1e-3") == ((3000, 1.5e-3), (8000, 1e-3))
    assert parse_cycles(format_cycles(BaseTrainSpec.cycles)) == BaseTrainSpec.cycles
    assert BaseTrainSpec().steps == sum(s for s, _ in BaseTrainSpec.cycles)
    for bad in ("", "3000", "3000:x", "0:1e-3", "10:0", "10:1e-3,"):
        with pytest.raises(ValueError, match="cycle"):
            parse_cycles(bad)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return ensure_scene_data(tmp_path_factory.mktemp("scenes"), SceneDataSpec(n_train=12, n_heldout=4))


def test_two_cycles_equal_a_cycle_then_a_continued_cycle(scenes, tmp_path):
    train, _ = scenes
    kwargs = dict(batch_size=4, seed=0)
    both = train_base_model(train, tmp_path / "both", BaseTrainSpec(cycles=((3, 2e-3), (2, 1e-3)), **kwargs))
    first = train_base_model(train, tmp_path / "first", BaseTrainSpec(cycles=((3, 2e-3),), **kwargs))
    then = train_base_model(train, tmp_path / "then", BaseTrainSpec(cycles=((2, 1e-3),), **kwargs), init=first)
    a, b = load_model(both)[0].state_dict(), load_model(then)[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert (tmp_path / "both" / "cycle0" / "model" / "config.json").exists()
    assert not all(torch.equal(a[k], load_model(first)[0].state_dict()[k]) for k in a)  # cycle 2 trained

    # resuming skips finished cycles (their models are reused, not retrained)
    mtime = (tmp_path / "both" / "cycle1" / "model" / "model.safetensors").stat().st_mtime
    train_base_model(train, tmp_path / "both", BaseTrainSpec(cycles=((3, 2e-3), (2, 1e-3)), **kwargs), resume=True)
    assert (tmp_path / "both" / "cycle1" / "model" / "model.safetensors").stat().st_mtime == mtime


def test_scene_split_of_another_size_is_regenerated_as_an_extension(tmp_path):
    _, small = ensure_scene_data(tmp_path, SceneDataSpec(n_train=12, n_heldout=4))
    _, large = ensure_scene_data(tmp_path, SceneDataSpec(n_train=12, n_heldout=6))
    assert len(small) == 4 and len(large) == 6
    assert [(a.objects, a.captions) for a in small.images] == [(a.objects, a.captions) for a in large.images[:4]]
