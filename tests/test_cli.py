"""``halluremedy eval`` on a tiny model: the JSON it writes, greedy-only CHAIR without POPE, where it writes,
and its input errors (one line, exit 2, before the model loads)."""

import json
import os
from pathlib import Path

import pytest

from halluremedy.cli import main
from halluremedy.data.scenes import make_dataset
from halluremedy.errors import ConfigError
from halluremedy.models.llava import save_model


def test_eval_writes_chair_and_pope(tiny_llava_factory, tmp_path, capsys):
    make_dataset(tmp_path / "scenes", "val", 24, seed=2, progress=False)
    model, processor = tiny_llava_factory(0)
    save_model(model, processor, tmp_path / "model")
    common = ["eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "scenes"), "--split", "val",
              "--chair-images", "4", "--max-new-tokens", "6"]
    assert main([*common, "--pope-images", "3", "--out", str(tmp_path / "full.json")]) == 0
    full = json.loads((tmp_path / "full.json").read_text())
    assert len(full["chair"]) == 2 and set(full["pope"]) == {"random", "popular", "adversarial"}
    assert len(full["chair"]["greedy"]["per_caption"]) == 4
    for m in full["pope"].values():  # the false "yes" breakdown covers every "no" question once
        assert sum(k["n"] for k in m["false_yes"].values()) == m["fp"] + m["tn"]
        assert sum(k["yes"] for k in m["false_yes"].values()) == m["fp"]

    assert main([*common, "--pope-images", "0", "--temperature", "--out", str(tmp_path / "greedy.json")]) == 0
    greedy = json.loads((tmp_path / "greedy.json").read_text())
    assert list(greedy["chair"]) == ["greedy"] and greedy["pope"] == {}
    assert greedy["chair"]["greedy"]["per_caption"] == full["chair"]["greedy"]["per_caption"]
    assert "wrote" in capsys.readouterr().out


@pytest.fixture
def model_and_scenes(tiny_llava_factory, tmp_path):
    make_dataset(tmp_path / "scenes", "val", 24, seed=2, progress=False)
    model, processor = tiny_llava_factory(0)
    save_model(model, processor, tmp_path / "tiny" / "model")
    return tmp_path / "tiny" / "model", tmp_path / "scenes"


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def _refused(capsys, argv) -> str:
    """Run ``halluremedy ARGV``: exit status 2 and one line on stderr, returned."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("halluremedy: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("flags, message", [
    (["--chair-images", "-5"], "option '--chair-images': must be >= 1, got -5"),  # was a numpy error
    (["--temperature", "1.0", "-1"], "option '--temperature': every temperature must be >= 0"),  # was accepted
    (["--chair-images", "1000"], "option '--chair-images': 1000 images asked for, but split 'val' of"),  # used 24
    (["--pope-images", "-1"], "option '--pope-images': must be >= 0, got -1"),
    (["--batch-size", "0"], "option '--batch-size': must be >= 1, got 0"),
    (["--device", "gpu"], "option '--device': must be cpu, cuda or cuda:N, got 'gpu'"),
    (["--chair-compat", "reference"], "option '--chair-compat': "),  # found after the captions, before
])
def test_eval_refuses_bad_options_before_loading_anything(model_and_scenes, tmp_path, capsys, monkeypatch,
                                                          flags, message):
    model, scenes = model_and_scenes
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    err = _refused(capsys, ["eval", "--model", str(model), "--data", str(scenes), *flags])
    assert message in err
    assert _files(tmp_path) == before  # nothing written, the model directory untouched


def test_eval_names_a_corrupt_image_before_the_model_loads(model_and_scenes, tmp_path, capsys, monkeypatch):
    model, scenes = model_and_scenes
    broken = sorted((scenes / "val").glob("*.png"))[5]
    broken.write_bytes(broken.read_bytes()[:60])
    monkeypatch.chdir(tmp_path)
    err = _refused(capsys, ["eval", "--model", str(model), "--data", str(scenes), "--chair-images", "2"])
    assert f"instances_val.json: images[5] (id 6) field 'file_name': {broken} is not a readable image" in err
    assert not (tmp_path / "runs").exists()


def test_eval_writes_under_runs_never_into_the_model_directory(model_and_scenes, tmp_path, capsys, monkeypatch):
    model, scenes = model_and_scenes
    monkeypatch.chdir(tmp_path)
    inside = _refused(capsys, ["eval", "--model", str(model), "--data", str(scenes), "--out", str(model / "e.json")])
    assert "option '--out': " in inside and "is inside the model directory" in inside
    shipped = _files(model)
    old = os.umask(0o022)
    try:
        assert main(["eval", "--model", str(model), "--data", str(scenes), "--chair-images", "2", "--pope-images",
                     "0", "--temperature", "--max-new-tokens", "2"]) == 0
    finally:
        os.umask(old)
    out = tmp_path / "runs" / "eval" / "tiny_model_val.json"  # was MODEL/eval_val.json, mode 0600
    assert out.is_file() and out.stat().st_mode & 0o777 == 0o644
    assert _files(model) == shipped
    result = json.loads(out.read_text())
    assert result["images"] == {"chair": 2, "pope": 0} and f"wrote {Path('runs/eval/tiny_model_val.json')}" in \
        capsys.readouterr().out


def test_eval_debug_shows_the_traceback(model_and_scenes):
    model, scenes = model_and_scenes
    with pytest.raises(ConfigError, match="--chair-images"):
        main(["--debug", "eval", "--model", str(model), "--data", str(scenes), "--chair-images", "0"])
    with pytest.raises(ConfigError, match="not a model directory"):
        main(["eval", "--model", str(scenes), "--data", str(scenes), "--debug"])
