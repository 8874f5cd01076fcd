"""The front doors, end to end at toy sizes: scene data -> base -> pairs -> stage 1 -> stage 2 -> eval."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args, cwd):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_dpo_embedded_default_end_to_end(tmp_path):
    common = ["--data", "d/scenes", "--base-out", "d/base", "--out", "d/povid", "--scene-train-images", "40",
              "--scene-heldout-images", "30", "--base-cycles", "6:1e-3:40", "--stage1-steps", "2",
              "--stage2-steps", "2", "--batch-size", "4", "--lora-r", "4", "--lora-alpha", "8"]
    out = _run("train_dpo.py", *common, "--eval-images", "12", "--control", cwd=tmp_path)
    assert "| base |" in out and "| stage1 |" in out and "| stage2 |" in out and "| sft-control |" in out
    d = tmp_path / "d"
    for name in ("base", "povid/stage1", "povid/stage2", "povid/sft_control"):
        assert (d / name / "model" / "model.safetensors").exists(), name
    for stage in ("stage1", "stage2"):
        assert (d / "povid" / stage / "metrics.png").exists()
    results = json.loads((d / "povid" / "eval.json").read_text())["results"]
    assert set(results) == {"base", "stage1", "stage2", "sft-control"}
    listing = json.loads((d / "povid" / "models.json").read_text())  # what povid_experiment --test-data reads
    assert set(listing) == set(results) and Path(listing["stage2"]) == Path("d/povid/stage2/model")
    assert set(results["stage2"]["pope"]) == {"random", "popular", "adversarial"}
    assert (d / "povid" / "pairs.jsonl").read_text().count("\n") > 10

    # --resume reuses every finished stage: nothing is retrained, the table comes back
    again = _run("train_dpo.py", *common, "--eval-images", "0", "--resume", cwd=tmp_path)
    assert "stage2" in again

    # the base in d/base was made by the 6-step recipe: asking for another one there is refused
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_dpo.py"), "--data", "d/scenes", "--base-out",
                           "d/base", "--out", "d/other", "--eval-images", "0"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "another recipe" in proc.stderr


def test_train_dpo_help_names_every_option(tmp_path):
    out = _run("train_dpo.py", "--help", cwd=tmp_path)
    for flag in ("--model", "--pairs", "--stage2-steps", "--noise-step", "--noise-positions", "--edit-kinds",
                 "--cooccur-modes", "--reference", "--resume", "--control"):
        assert flag in out
