"""scripts/paired_chair.py on hand-made evaluation JSONs."""

import json
from pathlib import Path

import pytest


def _write(path: Path, flags: list[bool]) -> str:
    path.write_text(json.dumps({"chair": {"greedy": {"per_caption": [
        {"image_id": i, "hallucinated": ["x"] if f else []} for i, f in enumerate(flags)]}}}))
    return str(path)


def test_one_base_file_against_every_seed(tmp_path, capsys, load_script):
    a = [_write(tmp_path / f"a{s}.json", [True, False, False, s == 1]) for s in range(2)]
    b = _write(tmp_path / "base.json", [True, True, False, False])
    load_script("paired_chair").main(["--a", *a, "--b", b, "--resamples", "200", "--out", str(tmp_path / "out.json")])
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["per_seed"]["values"] == pytest.approx([-0.25, 0.0]) and out["images"] == 4
    assert "over 2 seed(s), 4 images" in capsys.readouterr().out


def test_bad_inputs_are_named(tmp_path, load_script):
    a = _write(tmp_path / "a.json", [True])
    (tmp_path / "pope_only.json").write_text(json.dumps({"chair": {}, "pope": {}}))
    with pytest.raises(SystemExit, match="pope_only.json"):
        load_script("paired_chair").main(["--a", a, "--b", str(tmp_path / "pope_only.json")])
    with pytest.raises(SystemExit):
        load_script("paired_chair").main(["--a", a, a, "--b", a, a, a])
