"""Typed recipe configs: a dataclass is the schema; YAML files and ``--key value`` flags fill it.

``parse_config(RecipeConfig, description)`` builds the ``--help`` from the dataclass fields and
their ``metadata["help"]``, reads ``--config FILE.yaml`` first, then applies flags, and rejects
unknown YAML keys, so a typo never becomes a silent default.

A recipe validates its own options in ``__post_init__`` with the ``check_*`` helpers below, so a
value out of range, an unknown choice or a forbidden combination stops the run before any data or
model is loaded, with :class:`~halluremedy.errors.ConfigError` naming the flag
(``option '--batch-size': must be >= 1, got 0``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing
from collections.abc import Collection
from pathlib import Path

import yaml

from halluremedy.data.coco import read_text
from halluremedy.errors import ConfigError

DEBUG_HELP = "on an input error, show the Python traceback instead of the one-line message (or HALLUREMEDY_DEBUG=1)"


def option(default, help: str):
    """A dataclass field with a ``--help`` text."""
    return dataclasses.field(default=default, metadata={"help": help})


def parse_config(cls, description: str, argv: list[str] | None = None):
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file with any of the options below (flags win)")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "").replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            base = _base_type(kind)
            parser.add_argument(flag, type=base, default=None, help=f"{text} (default: {f.default})")
    args = parser.parse_args(argv)
    values = {}
    if args.config is not None:
        try:
            loaded = yaml.safe_load(read_text(args.config)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{args.config}: malformed YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}: must be a mapping of option: value, got {type(loaded).__name__}")
        unknown = set(loaded) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            parser.error(f"{args.config}: unknown option(s) {sorted(unknown, key=str)}")
        for name, value in loaded.items():
            _check_yaml_type(args.config, name, value, _base_type(hints[name]))
        values.update(loaded)
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    return cls(**values)


def _base_type(kind):
    """``str | None`` -> str; plain types unchanged."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


def _check_yaml_type(path: Path, name: str, value: object, kind: type) -> None:
    """A YAML value must be of the option's type (an int is a float); a flag's text is converted by argparse."""
    ok = isinstance(value, bool) if kind is bool else \
        isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
        isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{path}: option '{name}' ({flag(name)}): must be {kind.__name__}, got {value!r}")


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _bad(name: str, what: str, value: object) -> ConfigError:
    return ConfigError(f"option '{flag(name)}': {what}, got {value!r}")


def check_range(cfg, name: str, *, ge: float | None = None, gt: float | None = None, lt: float | None = None,
                le: float | None = None) -> None:
    """``cfg.name`` within the given bounds (NaN never is)."""
    value = getattr(cfg, name)
    bounds = [(ge, ">=", lambda v, b: v >= b), (gt, ">", lambda v, b: v > b), (lt, "<", lambda v, b: v < b),
              (le, "<=", lambda v, b: v <= b)]
    wanted = [f"{op} {b:g}" for b, op, _ in bounds if b is not None]
    if not all(test(value, b) for b, _, test in bounds if b is not None):
        raise _bad(name, "must be " + " and ".join(wanted), value)


def check_choice(cfg, name: str, choices: Collection[str]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise _bad(name, "must be one of " + ", ".join(map(str, choices)), value)


def split_items(text: str) -> list[str]:
    """``"a, b,c"`` / ``"a b c"`` -> ``["a", "b", "c"]``."""
    return [t for t in re.split(r"[,\s]+", text) if t]


def check_subset(cfg, name: str, choices: Collection[str]) -> list[str]:
    """``cfg.name`` is a comma-separated, non-empty list of distinct ``choices``; returns its items."""
    value = getattr(cfg, name)
    items = split_items(value)
    if not items or any(i not in choices for i in items) or len(set(items)) != len(items):
        raise _bad(name, "must be distinct items of " + ", ".join(map(str, choices)) + ", comma-separated", value)
    return items


def check_device(cfg, name: str = "device") -> None:
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA only where torch sees a GPU."""
    value = getattr(cfg, name)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(value)):
        raise _bad(name, "must be cpu, cuda or cuda:N", value)
    if value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise _bad(name, "asks for CUDA, but torch sees no GPU here (torch.cuda.is_available() is False)", value)


def check_model_dir(path: str | os.PathLike, option: str = "--model") -> Path:
    """``path`` as a local model directory (it has a ``config.json``), or ConfigError naming ``option``."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"option '{option}': {path} is not a model directory (no config.json there; halluremedy "
                          f"never downloads models)")
    return path


def check(condition: bool, name: str, what: str, value: object) -> None:
    """Refuse ``cfg.name = value`` unless ``condition``: ``option '--name': what, got value``."""
    if not condition:
        raise _bad(name, what, value)
