"""scripts/remedy_loop.py end to end at toy sizes: diagnose -> generate -> train -> re-diagnose -> report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from halluremedy.config import parse_config
from halluremedy.data.scenes import CLASSES
from halluremedy.recipes.remedy_loop import RemedyConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "remedy_loop.py"


def _run(*args, cwd):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_list_flags_take_several_values():
    cfg = parse_config(RemedyConfig, "", ["--seeds", "0", "1", "2", "--steps", "5", "--arms", "reflective"])
    assert (cfg.seeds, cfg.steps, cfg.arms) == ((0, 1, 2), 5, ("reflective",))
    assert parse_config(RemedyConfig, "", ["--seeds", "0,1 2"]).seeds == (0, 1, 2)  # the comma form still works


def test_remedy_loop_end_to_end(tmp_path):
    arms = ["targeted-sft", "untargeted-sft", "targeted-dpo", "untargeted-dpo", "reflective", "answer-only"]
    common = ["--data", "d/scenes", "--base-out", "d/base", "--out", "d/remedy", "--scene-train-images", "40",
              "--scene-heldout-images", "30", "--diag-images", "12", "--eval-images", "12",
              "--records", "16", "--steps", "2", "--batch-size", "4", "--lora-r", "4", "--lora-alpha", "8"]
    out = _run(*common, "--seeds", "0", "1", "--arms", *arms, cwd=tmp_path)
    d = tmp_path / "d" / "remedy"
    assert "| targeted-sft - untargeted-sft |" in out and "| reflective - answer-only |" in out
    for name in ("diagnosis.json", "report.md", "worst_classes.png"):
        assert (d / "diagnosis" / "base" / name).stat().st_size > 100, name
    for name in ("report.md", "before_after.png", "results.json", "target_weights.json"):
        assert (d / name).stat().st_size > 100, name
    results = json.loads((d / "results.json").read_text())
    assert set(results["held_out"]) == {"base", *arms}
    assert all(results["held_out"][a]["POPE-adv/F1"]["n"] == 2 for a in arms)
    assert set(results["per_seed"]["reflective"][0]) >= {"POPE-ran/F1", "POPE-pop/F1", "POPE-adv/F1", "CHAIR_i/greedy"}
    assert set(results["paired_differences"]) == {"targeted-sft - untargeted-sft", "targeted-dpo - untargeted-dpo",
                                                  "reflective - answer-only"}
    assert set(results["rediagnosis"]) == {"base", *arms}
    for seed in (0, 1):
        for arm in arms:
            run = d / f"seed{seed}" / arm
            assert (run / "model" / "model.safetensors").exists() and (run / "eval.json").exists(), run
            assert (run / "diagnosis" / "diagnosis.json").exists()
    # equal sample counts: every SFT arm's data has the same number of records (reflective: 2 samples each)
    lines = {arm: (d / "seed0" / arm / "data.jsonl").read_text().count("\n")
             for arm in ("targeted-sft", "untargeted-sft", "answer-only", "reflective")}
    assert lines == {"targeted-sft": 16, "untargeted-sft": 16, "answer-only": 16, "reflective": 32}
    assert (d / "seed0" / "targeted-dpo" / "pairs.jsonl").read_text().count("\n") == 16

    # a second call reuses every finished arm and diagnosis
    mtime = (d / "seed0" / "reflective" / "model" / "model.safetensors").stat().st_mtime
    again = _run(*common, "--seeds", "0", "--arms", "reflective", cwd=tmp_path)
    assert "| reflective | 1 |" in again
    assert (d / "seed0" / "reflective" / "model" / "model.safetensors").stat().st_mtime == mtime

    # --fresh-scenes: each arm draws from newly rendered scenes, classes by its own weights
    fresh = [a if a != "d/remedy" else "d/fresh" for a in common]
    _run(*fresh, "--seeds", "0", "--arms", "targeted-sft", "untargeted-sft", "--fresh-scenes", "24", "--no-rediagnose",
         "--class-score", "error", "--class-balance", "--test-data", "d/scenes", "--test-split", "val", "--test-images", "10",
         cwd=tmp_path)
    scenes = tmp_path / "d" / "fresh" / "seed0" / "scenes"
    for arm, split in (("targeted-sft", "fresh_targeted"), ("untargeted-sft", "fresh_uniform")):
        assert len(list((scenes / split).glob("*.png"))) == 24
        records = [json.loads(line) for line in (tmp_path / "d" / "fresh" / "seed0" / arm / "data.jsonl").open()]
        assert len(records) == 16 and all(r["image"].startswith(split + "_") for r in records)
    weights = json.loads((tmp_path / "d" / "fresh" / "target_weights.json").read_text())
    instances = json.loads((scenes / "annotations" / "instances_fresh_targeted.json").read_text())
    assert weights["targeted"]["classes"] != weights["untargeted"]["classes"] and instances["annotations"]
    diagnosis = json.loads((tmp_path / "d" / "fresh" / "diagnosis" / "base" / "diagnosis.json").read_text())
    aimed = {c: stats["error_rate"] + 0.02 for c, stats in diagnosis["classes"].items()}
    assert weights["targeted"]["classes"] == pytest.approx({c: v / sum(aimed.values()) for c, v in aimed.items()})
    # --test-data: every model captions the test split once; same-seed differences with intervals
    results = json.loads((tmp_path / "d" / "fresh" / "results.json").read_text())
    differences = results["test"]["differences"]
    assert set(differences) == {"targeted-sft - untargeted-sft", "targeted-sft - base", "untargeted-sft - base"}
    captions = {arm: json.loads((tmp_path / "d" / "fresh" / "seed0" / arm / "test_val.json").read_text())
                ["chair"]["greedy"]["per_caption"] for arm in ("targeted-sft", "untargeted-sft")}
    flags = {arm: sum(bool(c["hallucinated"]) for c in per) / len(per) for arm, per in captions.items()}
    stats = differences["targeted-sft - untargeted-sft"]
    assert stats["images"] == 10 and len(captions["targeted-sft"]) == 10
    assert stats["per_seed"]["mean"] == pytest.approx(flags["targeted-sft"] - flags["untargeted-sft"])
    assert stats["interval"][0] <= stats["per_seed"]["mean"] <= stats["interval"][1]
    report = (tmp_path / "d" / "fresh" / "report.md").read_text()
    assert "Greedy CHAIR_s on d/scenes:val" in report and "## By class on d/scenes:val" in report
    by_class = results["by_class"]["arms"]["targeted-sft"]
    for c in CLASSES:  # the test split's per-class figures are those of the arm's test captions
        said = sum(m["category"] == c for caption in captions["targeted-sft"] for m in caption["hallucinated"])
        assert by_class.get(f"class/{c}/hallucinated", {"mean": 0.0})["mean"] == pytest.approx(said / 10), c


def test_help_names_the_protocol_options(tmp_path):
    out = _run("--help", cwd=tmp_path)
    for flag in ("--seeds", "--arms", "--records", "--diag-split", "--reflective-weights", "--rediagnose"):
        assert flag in out
