"""The front doors, end to end at toy sizes: scene data -> base -> pairs -> stage 1 -> stage 2 -> eval; and their
input errors: one line, exit status 2, before the first step, nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from halluremedy.errors import run_main
from halluremedy.models.llava import save_model

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args, cwd):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_dpo_embedded_default_end_to_end(tmp_path):
    common = ["--data", "d/scenes", "--base-out", "d/base", "--out", "d/povid", "--scene-train-images", "40",
              "--scene-heldout-images", "30", "--stage1-steps", "2",
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

    # the base in d/base is the llava-like default (the shipped copy): asking for another one there is refused
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_dpo.py"), "--data", "d/scenes", "--base-out",
                           "d/base", "--out", "d/other", "--eval-images", "0", "--base", "perception-limited"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "another recipe" in proc.stderr


def test_train_dpo_help_names_every_option(tmp_path):
    out = _run("train_dpo.py", "--help", cwd=tmp_path)
    for flag in ("--model", "--pairs", "--stage2-steps", "--noise-step", "--noise-positions", "--edit-kinds",
                 "--cooccur-modes", "--reference", "--resume", "--control"):
        assert flag in out


@pytest.fixture
def user_data(tiny_coco_split, tiny_llava_factory, tmp_path):
    """A user's COCO root (train and val, 6 images each) and a tiny model that knows its words."""
    tiny_coco_split("train")
    tiny_coco_split("val")
    model, processor = tiny_llava_factory(0)
    save_model(model, processor, tmp_path / "model")
    return tmp_path / "coco", tmp_path / "model"


def _pairs(path, *records: str | bytes) -> str:
    path.write_bytes(b"".join(r if isinstance(r, bytes) else r.encode() for r in records))
    return str(path)


def _pair(chosen="a red square.", rejected="a blue square.", image="0000.png") -> str:
    return json.dumps({"image": image, "conversations": [
        {"from": "human", "value": "<image>\nDescribe this image."}, {"from": "gpt", "value": chosen}],
        "rejected_conversations": [{"from": "human", "value": "<image>\nDescribe this image."},
                                   {"from": "gpt", "value": rejected}]}) + "\n"


def _refused(module, argv, capsys) -> str:
    """Run the recipe's main through the shared entry wrapper: exit 2, one line on stderr, returned."""
    with pytest.raises(SystemExit) as stop:
        run_main(module.main, argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("halluremedy: error: ") and err.count("\n") == 1, err
    return err[len("halluremedy: error: "):].strip()


LONG = " ".join(["a red square and a white circle."] * 40)
DPO_CASES = {
    # option errors: before any data or model is read (they used to fail after the model loaded)
    "loss-type": (["--loss-type", "foo"], "option '--loss-type': must be one of sigmoid, ipo, hinge, got 'foo'"),
    "batch-size": (["--batch-size", "0"], "option '--batch-size': must be >= 1, got 0"),
    "stage1-steps": (["--stage1-steps", "0"], "option '--stage1-steps': must be >= 1, got 0"),
    "noise-step": (["--noise-step", "1000"], "option '--noise-step': must be >= 0 and < 1000, got 1000"),
    "reference": (["--no-lora"], "option '--reference': adapter (LoRA disabled) needs --lora"),
    "edit-kinds": (["--edit-kinds", "cooccur,bogus"], "option '--edit-kinds': must be distinct items of"),
    # data errors: named with file and line, found before the first step
    "utf8": (["--pairs", lambda d: _pairs(d / "p.jsonl", _pair(), b'{"image": "0000.png\xff"}\n')],
             "p.jsonl:2: not valid UTF-8 at byte offset "),
    "empty": (["--pairs", lambda d: _pairs(d / "p.jsonl")], "p.jsonl: no preference records (an empty file, 0 bytes)"),
    "unknown image": (["--pairs", lambda d: _pairs(d / "p.jsonl", _pair(image="0099.png"))],
                      "p.jsonl:1: field 'image' names '0099.png', which is not among the 6 known images"),
    "too long": (["--pairs", lambda d: _pairs(d / "p.jsonl", _pair(), _pair(chosen=LONG))],
                 "p.jsonl:2: field 'chosen': "),
    "unknown words": (["--pairs", lambda d: _pairs(d / "p.jsonl", _pair(rejected="a zebra and a red square."))],
                      "p.jsonl:1: field 'rejected': 'zebra' not in the word-level vocabulary of "),
    "eval-images": (["--eval-images", "1000"], "option '--eval-images': 1000 images asked for, but split 'val'"),
    "pope": (["--eval-images", "3"], "option '--eval-images': POPE: no image in dataset"),  # was found after training
    "decoder-kernels": (["--decoder-kernels", "liger"], "option '--decoder-kernels': needs --device cuda"),
}


@pytest.mark.parametrize("case", DPO_CASES)
def test_train_dpo_input_errors_are_one_line_before_the_first_step(user_data, load_script, tmp_path, capsys, case):
    data, model = user_data
    flags, message = DPO_CASES[case]
    flags = [f(tmp_path) if callable(f) else f for f in flags]
    out = tmp_path / "out"
    defaults = ["--eval-images", "0"] if "--eval-images" not in flags else []
    err = _refused(load_script("train_dpo"), ["--model", str(model), "--data", str(data), "--out", str(out),
                                              *defaults, *flags], capsys)
    assert message in err, err
    assert not out.exists()  # no partial output
    if case == "too long":
        assert "> the 256-token context of " in err and "no option raises it" in err


def test_train_dpo_a_corrupt_held_out_image_stops_it_before_training(user_data, load_script, tmp_path, capsys):
    # it used to be found by the evaluation, after both stages had trained (stage outputs left, no eval.json)
    data, model = user_data
    broken = data / "val" / "0003.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    err = _refused(load_script("train_dpo"), ["--model", str(model), "--data", str(data), "--out", str(out),
                                              "--eval-images", "0"], capsys)
    assert err.startswith(f"{data}/annotations/instances_val.json: images[3] (id 4) field 'file_name': {broken} ")
    assert not out.exists()


def test_train_dpo_embedded_default_leaves_a_users_data_alone(user_data, load_script, tmp_path, capsys):
    data, _ = user_data
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    module = load_script("train_dpo")
    err = _refused(module, ["--data", str(data), "--out", str(tmp_path / "out")], capsys)
    assert err.startswith(f"option '--data': {data} is not a scene world made by the embedded default")
    err = _refused(module, ["--data", str(data), "--split", "train", "--eval-split", "myval"], capsys)
    assert err.startswith("option '--eval-split': the embedded default (no --model) trains on its own scene splits")
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "out").exists()


def test_train_dpo_valid_pairs_pass_the_checks_and_train(user_data, load_script, tmp_path):
    data, model = user_data
    pairs = _pairs(tmp_path / "p.jsonl", _pair(), _pair("a box.", "a disc.", "0001.png"))
    out = tmp_path / "out"
    assert run_main(load_script("train_dpo").main, [
        "--model", str(model), "--data", str(data), "--pairs", pairs, "--out", str(out), "--stages", "1",
        "--stage1-steps", "1", "--batch-size", "2", "--lora-r", "2", "--lora-alpha", "4", "--eval-images", "0"]) == 0
    assert (out / "stage1" / "model" / "config.json").is_file()


def test_train_dpo_resume_refuses_changed_settings_in_one_line(user_data, load_script, tmp_path, capsys):
    data, model = user_data
    pairs = _pairs(tmp_path / "p.jsonl", _pair(), _pair("a box.", "a disc.", "0001.png"))
    argv = ["--model", str(model), "--data", str(data), "--pairs", pairs, "--out", str(tmp_path / "out"),
            "--stages", "1", "--stage1-steps", "1", "--batch-size", "2", "--lora-r", "2", "--lora-alpha", "4",
            "--eval-images", "0", "--resume"]
    recipe = load_script("train_dpo")
    assert run_main(recipe.main, argv) == 0
    finished = (tmp_path / "out" / "stage1" / "model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()  # the training run's progress bars
    message = _refused(recipe, [*argv, "--lr", "1e-3"], capsys)
    assert "--resume into a run made with other settings: tuning.lr: 5e-05 -> 0.001" in message
    assert run_main(recipe.main, [*argv, "--lr", "1e-3", "--resume-with-changes"]) == 0  # reuses the finished stage
    assert (tmp_path / "out" / "stage1" / "model" / "model.safetensors").stat().st_mtime_ns == finished
    capsys.readouterr()
    assert "option '--resume-with-changes': goes with --resume" in _refused(
        recipe, [a for a in argv if a != "--resume"] + ["--resume-with-changes"], capsys)


@pytest.mark.parametrize("script, flags, message", [
    ("train_sft", ["--cycles", "0:1e-3:10"], "option '--cycles': every cycle needs steps >= 1"),
    ("train_sft", ["--batch-size", "0"], "option '--batch-size': must be >= 1, got 0"),
    ("remedy_loop", ["--arms", "targeted-sft,bogus"], "option '--arms': must be distinct items of targeted-sft"),
    ("remedy_loop", ["--eval-images", "0"], "option '--eval-images': must be >= 1, got 0"),
    ("remedy_loop", ["--seeds", "0", "x"], "option '--seeds': every value must be int, got ['0', 'x']"),
    ("remedy_loop", ["--seeds", "0", "0"], "option '--seeds': must be distinct integers >= 0, got '0,0'"),
    ("povid_experiment", ["--seeds", "-1"], "option '--seeds': must be distinct integers >= 0, got [-1]"),
])
def test_other_recipes_refuse_bad_options_in_one_line(load_script, tmp_path, capsys, script, flags, message):
    err = _refused(load_script(script), [*flags, "--out", str(tmp_path / "out")], capsys)
    assert err == message or err.startswith(message), err
    assert not (tmp_path / "out").exists()


def test_train_sft_leaves_a_users_data_alone(user_data, load_script, tmp_path, capsys):
    data, _ = user_data
    err = _refused(load_script("train_sft"), ["--data", str(data), "--out", str(tmp_path / "out")], capsys)
    assert err.startswith(f"{data} is not a scene world made by the embedded default")


def test_an_input_error_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_dpo.py"), "--batch-size", "0", "--out",
                           str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr == "halluremedy: error: option '--batch-size': must be >= 1, got 0\n"
    assert not (tmp_path / "out").exists()
    debug = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_dpo.py"), "--batch-size", "0", "--debug"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_train_dpo_under_torchrun_two_ranks(user_data, tmp_path):
    """The front door as ``torchrun --nproc_per_node 2`` (gloo): both ranks train every stage, rank 0 writes
    the models (the equality of the result with one process is tests/train/test_distributed.py's)."""
    data, model = user_data
    pairs = _pairs(tmp_path / "p.jsonl", _pair(), _pair("a box.", "a disc.", "0001.png"))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "scripts" / "train_dpo.py"), "--model", str(model), "--data", str(data), "--pairs", pairs,
         "--out", str(out), "--stage1-steps", "2", "--stage2-steps", "1", "--batch-size", "1", "--lora-r", "2",
         "--lora-alpha", "4", "--control", "--eval-images", "0"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "models.json").read_text()).keys() == {"base", "stage1", "stage2", "sft-control"}
    for stage in ("stage1", "stage2", "sft_control"):
        assert json.loads((out / stage / "settings.json").read_text())["world_size"] == 2
        assert (out / stage / "model" / "model.safetensors").is_file()
    assert proc.stdout.count('"stage2":') == 1  # the model listing, printed by rank 0 alone
