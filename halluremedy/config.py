"""Typed recipe configs: a dataclass is the schema; YAML files and ``--key value`` flags fill it.

``parse_config(RecipeConfig, description)`` builds the ``--help`` from the dataclass fields and
their ``metadata["help"]``, reads ``--config FILE.yaml`` first, then applies flags, and rejects
unknown YAML keys, so a typo never becomes a silent default.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import yaml


def option(default, help: str):
    """A dataclass field with a ``--help`` text."""
    return dataclasses.field(default=default, metadata={"help": help})


def parse_config(cls, description: str, argv: list[str] | None = None):
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file with any of the options below (flags win)")
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
        loaded = yaml.safe_load(args.config.read_text()) or {}
        unknown = set(loaded) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            parser.error(f"{args.config}: unknown option(s) {sorted(unknown)}")
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
