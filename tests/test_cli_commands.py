"""Every front door answers ``--help`` (each ``halluremedy`` subcommand, each ``scripts/*.py``), and the
commands run end to end at toy size: ``scenes`` -> ``generate`` -> ``diagnose``, and the embedded default
through ``halluremedy train-dpo``, whose run directory says what ran and runs again from its config.yaml."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from halluremedy.cli import COMMANDS, main
from halluremedy.config import flat_config, parse_config
from halluremedy.data.coco import CocoDataset
from halluremedy.models.llava import save_model
from halluremedy.recipes.train_dpo import DPORecipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_help_shows_its_options_and_defaults(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0 and f"halluremedy {command}" in text and "--config CONFIG" in text
    assert "(default: " in text or "(required)" in text


def test_halluremedy_help_lists_every_subcommand():
    proc = subprocess.run([sys.executable, "-m", "halluremedy.cli", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert f"    {command}" in proc.stdout, command


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_help_runs(script, tmp_path):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


def test_scenes_generate_diagnose(tiny_llava_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["scenes", "--out", "scenes", "--split", "diag", "--n", "16", "--seed", "4",
                 "--class-weights", "cross=0", "bar=0"]) == 0
    scenes = CocoDataset.load("scenes", "diag", require_captions=True)
    assert len(scenes) == 16 and not {o.category for im in scenes.images for o in im.objects} & {"cross", "bar"}
    config = tmp_path / "generate.yaml"
    config.write_text("data: scenes\nsplit: diag\nout: pairs.jsonl\nseed: 0\nkinds: [attribute]\nprogress: false\n")
    assert main(["generate", "--config", str(config), "--per-image", "1"]) == 0
    lines = [json.loads(line) for line in Path("pairs.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and all("rejected_conversations" in line for line in lines)

    model, processor = tiny_llava_factory(0)
    save_model(model, processor, tmp_path / "tiny" / "model")
    assert main(["diagnose", "--model", "tiny/model", "--data", "scenes", "--split", "diag", "--images", "4",
                 "--max-new-tokens", "4"]) == 0
    report = tmp_path / "runs" / "diagnose" / "tiny_model_diag"
    assert {p.name for p in report.iterdir()} >= {"report.md", "diagnosis.json", "worst_classes.png"}


def test_embedded_default_through_the_cli_at_toy_size(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # the default base (the shipped LLaVA-like one, copied) on a toy-sized scene world
    toy = ["--data", "d/scenes", "--base-out", "d/base", "--out", "d/povid", "--scene-train-images", "40",
           "--scene-heldout-images", "30", "--stage1-steps", "2", "--stage2-steps", "2",
           "--batch-size", "4", "--lora-r", "4", "--lora-alpha", "8", "--eval-images", "12"]
    assert main(["train-dpo", *toy]) == 0
    out = tmp_path / "d" / "povid"
    summary = (out / "summary.md").read_text()
    assert "| stage2 |" in summary and "`stage2/model`" in summary and "`stage1/metrics.png`" in summary
    assert "halluremedy train-dpo --config d/povid/config.yaml" in summary and "stage1_steps: 2" in summary
    assert (out / "eval.md").read_text().strip() in summary
    ran = parse_config(DPORecipe, "", ["--config", str(out / "config.yaml")])
    assert ran == parse_config(DPORecipe, "", toy)
    assert json.loads((out / "eval.json").read_text())["recipe"] == flat_config(ran)
    capsys.readouterr()
    assert main(["train-dpo", "--config", str(out / "config.yaml"), "--resume", "--eval-images", "0"]) == 0
    assert "not evaluated" in (out / "summary.md").read_text()  # every stage reused, the summary rewritten


@pytest.mark.parametrize("flags, message", [
    (["--stages"], "option '--stages': must name a stage, 1 and/or 2"),
    (["--stages", "2", "1"], "option '--stages': must list stage 1 before stage 2, got '2,1'"),
    (["--stages", "1,3"], "option '--stages': must be distinct items of 1, 2, got '1,3'"),
    (["--noise-positions", "all", "seen"], "option '--noise-positions': must be all, or distinct rules of seen, "
                                           "novel, present, got 'all,seen'"),
    (["--edit-kinds"], "option '--edit-kinds': must name at least one"),
    (["--loss-type", "ipo", "--label-smoothing", "0.1"], "option '--label-smoothing': applies to --loss-type "
                                                          "sigmoid only, not 'ipo'"),
    (["--base-cycles", "6:1e-3"], "option '--base-cycles': cycles must look like 'STEPS:LR:SCENES[:NOISED],...'"),
    (["--base-cycles", "6:1e-3:40"], "option '--base-cycles': applies to --base perception-limited"),
    (["--base", "clip"], "option '--base': must be one of llava-like, perception-limited"),
])
def test_train_dpo_option_errors_are_one_line_naming_the_flag(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        main(["train-dpo", "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith(f"halluremedy: error: {message}"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--extra-noise", "0.8,x"], "option '--extra-noise': expected comma-separated rates, got '0.8,x'"),
    (["--instruct", "2000"], "option '--instruct': expected STEPS:LR, got '2000'"),
    (["--partner-noise", "1.5"], "option '--partner-noise'"),
    (["--qa-partner-noise", "-0.1"], "option '--qa-partner-noise'"),
    (["--qa-partner-share", "2"], "option '--qa-partner-share'"),
    (["--text-hidden", "100"], "option '--text-hidden': must be a multiple of 32"),
    (["--text-layers", "0"], "option '--text-layers'"),
    (["--detailed-order", "salience"], "option '--detailed-order': must be one of random, reading"),
])
def test_train_llava_base_option_errors_are_one_line_naming_the_flag(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        main(["train-llava-base", "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith(f"halluremedy: error: {message}"), err
    assert not (tmp_path / "out").exists()


def test_train_sft_through_the_cli_at_toy_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train-sft", "--data", "scenes", "--out", "base", "--cycles", "3:1e-3:40", "2:5e-4:40",
                 "--batch-size", "4", "--eval-images", "12"]) == 0
    summary = (tmp_path / "base" / "summary.md").read_text()
    assert "| base |" in summary and "`model`" in summary and "`cycle1/metrics.png`" in summary
    assert "cycles: ['3:1e-3:40', '2:5e-4:40']" in summary
    assert (tmp_path / "base" / "model" / "config.json").is_file()


def test_train_llava_base_defaults_are_the_shipped_recipe_and_size_the_lm():
    from halluremedy.recipes.train_llava_base import LlavaBaseRecipe
    from halluremedy.train.llava_recipe import LlavaRecipeSpec

    assert LlavaBaseRecipe().spec() == LlavaRecipeSpec()
    assert LlavaBaseRecipe(detailed_order="reading").spec().detailed_order == "reading"
    wide = LlavaBaseRecipe(text_hidden=192, text_layers=4, qa_weight=1.4).spec().model_spec()
    assert (wide.text_hidden, wide.text_layers, wide.text_heads, wide.text_intermediate) == (192, 4, 6, 384)
