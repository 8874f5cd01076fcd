"""Every command the README prints runs as written: each ``halluremedy`` subcommand and script exists and
takes every ``--flag`` the README gives it, each file it names exists, each pip extra is declared."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from halluremedy.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    """Shell commands of the README's ```bash blocks (continuation lines joined, comments cut, ``&&``
    chains split) and of its table cells written as `halluremedy ...` / `python ...`."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            commands += [part.strip() for part in line.split("#")[0].split("&&") if part.strip()]
    commands += re.findall(r"`((?:halluremedy|python) [^`]+)`", README)
    return commands


COMMANDS_IN_README = readme_commands()


def _flags(command: str) -> list[str]:
    return [t.split("=")[0] for t in shlex.split(command) if t.startswith("--")]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main(argv + ["--help"])
    return capsys.readouterr().out


def test_the_readme_has_the_quick_start_and_test_commands():
    assert "pip install torch==2.13.0 && pip install -e . && python scripts/train_dpo.py" in README
    assert 'pip install -e ".[dev,bench]" && pytest -q tests' in README
    assert len(README.splitlines()) <= 200


@pytest.mark.parametrize("command", [c for c in COMMANDS_IN_README if c.startswith("halluremedy ")])
def test_halluremedy_commands_take_their_flags(command, capsys):
    sub = shlex.split(command)[1]
    assert sub in COMMANDS, command
    text = _help([sub], capsys)
    for flag in _flags(command):
        assert re.search(rf"{re.escape(flag)}\b", text), f"{command}: {flag}"


@pytest.mark.parametrize("command", sorted({c for c in COMMANDS_IN_README if re.match(r"(python|torchrun)\b", c)}))
def test_scripts_exist_and_take_their_flags(command):
    tokens = shlex.split(command)
    script = next(t for t in tokens if t.endswith(".py"))
    assert (ROOT / script).is_file(), command
    flags = [f for f in _flags(command) if f != "--nproc_per_node"]  # torchrun's own
    if script.startswith("scripts/") and flags:
        proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        for flag in flags:
            assert re.search(rf"{re.escape(flag)}\b", proc.stdout), f"{command}: {flag}"


def test_files_extras_and_links_exist():
    setup = (ROOT / "setup.py").read_text()
    for extras in re.findall(r'pip install -e "\.\[([a-z,]+)\]"', README):
        for extra in extras.split(","):
            assert f'"{extra}":' in setup, extra
    for path in re.findall(r"`((?:configs|docs|bench|kernels|halluremedy/assets)/[\w./]+)`", README):
        assert (ROOT / path).exists(), path
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        assert (ROOT / link).exists(), link
