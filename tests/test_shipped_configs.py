"""Every YAML in configs/ names the command that reads it, parses into that command's config (an unknown
key or a bad value fails), and says what it claims: the embedded defaults are what a no-argument run does,
the LLaVA-1.5-7B config holds POVID's published hyper-parameters."""

import re
from pathlib import Path

import pytest

from halluremedy.cli import COMMANDS
from halluremedy.config import parse_config
from halluremedy.errors import run_main
from halluremedy.recipes.train_dpo import DPORecipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def config_class(path: Path):
    """The config dataclass of the command the file's header runs it with."""
    found = re.search(rf"halluremedy ([a-z-]+) --config configs/{path.name}", path.read_text())
    assert found, f"{path.name}: its header names no command that reads it"
    return COMMANDS[found.group(1)].config


def test_the_four_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"embedded_default.yaml", "llava15_7b_1gpu.yaml", "best_measured.yaml",
                                         "remedy_loop.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_parses_into_its_commands_config(path):
    cls = config_class(path)
    assert isinstance(parse_config(cls, "", ["--config", str(path)]), cls)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_an_unknown_key_in_a_shipped_config_is_refused(path, tmp_path, capsys):
    cls = config_class(path)
    typo = tmp_path / path.name
    typo.write_text(path.read_text() + "lora_rank: 8\n")
    with pytest.raises(SystemExit) as stop:
        run_main(lambda argv: parse_config(cls, "", argv), ["--config", str(typo)])
    assert stop.value.code == 2 and "unknown option(s) ['lora_rank']" in capsys.readouterr().err


def test_the_embedded_default_configs_are_the_no_argument_runs():
    assert parse_config(DPORecipe, "", ["--config", str(CONFIGS / "embedded_default.yaml")]) == DPORecipe() \
        == parse_config(DPORecipe, "", [])
    remedy = COMMANDS["remedy"].config
    assert parse_config(remedy, "", ["--config", str(CONFIGS / "remedy_loop.yaml")]) == remedy()


def test_the_llava_config_holds_povids_published_hyper_parameters():
    cfg = parse_config(DPORecipe, "", ["--config", str(CONFIGS / "llava15_7b_1gpu.yaml")])
    assert (cfg.lora.lora, cfg.lora.lora_r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (True, 128, 256, 0.05)
    objective = cfg.objective
    assert (objective.loss_type, objective.beta, objective.nll_alpha, objective.label_smoothing) == \
        ("sigmoid", 0.1, 0.0, 0.0)
    assert (objective.noise_step, objective.noise_positions, objective.weight_text, objective.weight_noise) == \
        (500, ("all",), 0.5, 0.5)
    assert objective.reference == "adapter" and cfg.stages == (1, 2)  # the policy with its adapters disabled
    assert (cfg.loop.lr, cfg.loop.batch_size * cfg.loop.grad_accum) == (1e-7, 16)
    assert cfg.model.device == "cuda" and cfg.model.model and cfg.preference.pairs
