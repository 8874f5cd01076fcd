"""``halluremedy eval`` on a tiny model: the JSON it writes, and greedy-only CHAIR without POPE."""

import json

from halluremedy.cli import main
from halluremedy.data.scenes import make_dataset
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

    assert main([*common, "--pope-images", "0", "--temperature", "--out", str(tmp_path / "greedy.json")]) == 0
    greedy = json.loads((tmp_path / "greedy.json").read_text())
    assert list(greedy["chair"]) == ["greedy"] and greedy["pope"] == {}
    assert greedy["chair"]["greedy"]["per_caption"] == full["chair"]["greedy"]["per_caption"]
    assert "wrote" in capsys.readouterr().out
