"""``halluremedy.config``: a recipe config of sections as flags and flat YAML, typed sequences and choices,
the resolved config written back as YAML, and ``assemble``'s by-name build of the package's dataclasses."""

from dataclasses import dataclass
from typing import Literal

import pytest

from halluremedy.config import (
    build_config,
    check_choices,
    config_options,
    config_yaml,
    flat_config,
    option,
    parse_config,
    required,
    section,
)
from halluremedy.errors import ConfigError, run_main
from halluremedy.recipes.sections import LoopSection, LoraSection, ObjectiveSection, assemble
from halluremedy.train.dpo import PreferenceObjective
from halluremedy.train.stages import TuningSpec


@dataclass(frozen=True)
class Inner:
    """Inner options."""

    width: int = option(4, "width")
    kinds: tuple[Literal["a", "b", "c"], ...] = option(("a", "b"), "kinds")

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class Toy:
    name: str = required("a name")
    steps: tuple[int, ...] = option((1, 2), "steps")
    mode: Literal["x", "y"] = option("x", "mode")
    limit: int | None = option(None, "limit")
    inner: Inner = section(Inner(width=8))

    def __post_init__(self) -> None:
        check_choices(self)


def test_sections_are_flat_flags_with_the_recipes_defaults():
    assert [o.name for o in config_options(Toy)] == ["name", "steps", "mode", "limit", "width", "kinds"]
    cfg = parse_config(Toy, "", ["--name", "n", "--width", "3"])
    assert cfg == Toy(name="n", inner=Inner(width=3))
    assert parse_config(Toy, "", ["--name", "n"]).inner.width == 8  # the recipe's default, not the section's


@pytest.mark.parametrize("flags, steps", [(["--steps", "3", "4"], (3, 4)), (["--steps", "3,4"], (3, 4)),
                                          (["--steps", "3, 4"], (3, 4)), (["--steps"], ())])
def test_a_sequence_takes_space_or_comma_separated_values(flags, steps):
    assert parse_config(Toy, "", ["--name", "n", *flags]).steps == steps


def test_yaml_is_flat_takes_lists_and_flags_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: n\nsteps: [5, 6]\nkinds: c,a\nwidth: 2\nlimit: null\n")
    assert parse_config(Toy, "", ["--config", str(path), "--width", "9"]) == \
        Toy(name="n", steps=(5, 6), inner=Inner(width=9, kinds=("c", "a")))


@pytest.mark.parametrize("text, message", [
    ("name: n\nwidht: 2\n", "unknown option(s) ['widht']"),
    ("name: n\nsteps: [1, x]\n", "option 'steps' (--steps): must be int, got 'x'"),
    ("name: n\nsteps: 3\n", "option 'steps' (--steps): must be a list, got 3"),
    ("name: n\nmode: 1\n", "option 'mode' (--mode): must be str, got 1"),
])
def test_yaml_errors_name_the_option(tmp_path, capsys, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as stop:
        run_main(lambda argv: parse_config(Toy, "", argv), ["--config", str(path)])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    ([], "option '--name' is required"),
    (["--name", "n", "--mode", "z"], "option '--mode': must be one of x, y, got 'z'"),
    (["--name", "n", "--kinds", "a", "d"], "option '--kinds': must be distinct items of a, b, c, got 'a,d'"),
    (["--name", "n", "--kinds", "a", "a"], "option '--kinds': must be distinct items of a, b, c, got 'a,a'"),
    (["--name", "n", "--steps", "1", "x"], "option '--steps': every value must be int, got ['1', 'x']"),
])
def test_flag_errors_name_the_option(flags, message):
    with pytest.raises(ConfigError) as error:
        parse_config(Toy, "", flags)
    assert str(error.value) == message or str(error.value).startswith(message)


def test_help_lists_every_option_with_its_default_and_choices(capsys):
    with pytest.raises(SystemExit):
        parse_config(Toy, "", ["--help"])
    text = capsys.readouterr().out
    for part in ("--name NAME", "(required)", "(default: 1 2)", "--mode {x,y}", "--kinds [{a,b,c} ...]",
                 "inner:", "Inner options.", "(default: 8)"):
        assert part in text, part


def test_the_written_yaml_reads_back_as_the_same_config(tmp_path):
    cfg = Toy(name="n", steps=(), mode="y", limit=3, inner=Inner(kinds=("c",)))
    text = config_yaml(cfg)
    assert "### recipe\nname: n\nsteps: []\n" in text and "### inner\nwidth: 4\nkinds: [c]\n" in text
    (tmp_path / "c.yaml").write_text(text)
    assert parse_config(Toy, "", ["--config", str(tmp_path / "c.yaml")]) == cfg
    assert flat_config(cfg)["kinds"] == ["c"] and build_config(Toy, {"name": "n"}) == Toy(name="n")


def test_option_names_are_unique_across_sections():
    @dataclass(frozen=True)
    class Clash:
        width: int = option(1, "clashes with Inner.width")
        inner: Inner = section(Inner())

    with pytest.raises(TypeError, match="used twice"):
        config_options(Clash)


def test_assemble_takes_every_field_by_name():
    lora, loop = LoraSection(lora_r=8, lora_alpha=16), LoopSection(lr=3e-4)
    spec = assemble(TuningSpec, lora, loop, steps=7, seed=5)
    assert spec == TuningSpec(steps=7, lr=3e-4, seed=5, lora_r=8, lora_alpha=16)
    objective = assemble(PreferenceObjective, ObjectiveSection(noise_positions=("seen", "novel"), nll_alpha=1.0),
                         stage=2)
    assert objective == PreferenceObjective(stage=2, noise_positions="seen,novel", nll_alpha=1.0)
    with pytest.raises(TypeError, match="given by two sections"):
        assemble(TuningSpec, loop, loop, steps=1)


def test_section_defaults_are_the_packages_own():
    assert assemble(TuningSpec, LoraSection(), LoopSection(), steps=TuningSpec.steps) == TuningSpec()
    assert assemble(PreferenceObjective, ObjectiveSection(), stage=1) == PreferenceObjective()
