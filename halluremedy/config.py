"""Typed recipe configs: a dataclass is the schema; YAML files and ``--key value`` flags fill it.

A recipe config is a frozen dataclass of options, and may compose *sections*: a field whose type is
itself a frozen dataclass of options (``lora: LoraSection = section(LoraSection(lora_r=128))``, see
:mod:`halluremedy.recipes.sections`). Every option of every section is one flag and one YAML key,
named by the field (``lora_r``: ``--lora-r``, ``lora_r: 128``); a YAML file is flat, as the flags
are, and may group its keys under comment headers (``### lora``) as :func:`config_yaml` writes them.

``parse_config(RecipeConfig, description)`` builds the ``--help`` from the fields (one group per
section, each option with its default) and their ``metadata["help"]``, reads ``--config FILE.yaml``
first, then applies flags, and rejects unknown YAML keys, so a typo never becomes a silent default.
Field types drive parsing: ``bool`` is ``--x / --no-x``; ``tuple[T, ...]`` takes space-separated
values (``--stages 1 2``; the older comma form ``--stages 1,2`` too) or a YAML list;
``Literal[...]`` lists its choices in ``--help``.

A recipe validates its own options in ``__post_init__`` with the ``check_*`` helpers below
(:func:`check_choices` checks every ``Literal`` field), so a value out of range, an unknown choice
or a forbidden combination stops the run before any data or model is loaded, with
:class:`~halluremedy.errors.ConfigError` naming the flag (``option '--batch-size': must be >= 1, got 0``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from pathlib import Path

import yaml

from halluremedy.data.coco import read_text
from halluremedy.errors import ConfigError

DEBUG_HELP = "on an input error, show the Python traceback instead of the one-line message (or HALLUREMEDY_DEBUG=1)"


def option(default, help: str):
    """A dataclass field with a ``--help`` text."""
    return dataclasses.field(default=default, metadata={"help": help})


def required(help: str):
    """A dataclass field without a default: the flag (or the YAML key) must be given."""
    return dataclasses.field(metadata={"help": help})


def section(default):
    """A recipe's section field: a frozen dataclass of options, with this recipe's defaults."""
    return dataclasses.field(default=default)


@dataclasses.dataclass(frozen=True)
class _Option:
    """One flag / YAML key of a recipe config: a field, at top level or inside section ``section``."""

    name: str
    section: str | None
    help: str
    kind: object  # the type hint, Optional stripped
    default: object  # dataclasses.MISSING: required

    @property
    def sequence(self) -> bool:
        return typing.get_origin(self.kind) is tuple

    @property
    def element(self):
        """The type of one value: ``int`` for ``tuple[int, ...]``, a ``Literal``'s the type of its choices."""
        kind = typing.get_args(self.kind)[0] if self.sequence else self.kind
        return type(typing.get_args(kind)[0]) if typing.get_origin(kind) is typing.Literal else kind


def config_options(cls) -> list[_Option]:
    """Every option of ``cls``, sections flattened, in declaration order; names are unique."""
    found: list[_Option] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _strip_none(hints[f.name])
        if dataclasses.is_dataclass(kind):
            default = f.default if f.default is not dataclasses.MISSING else kind()
            inner = typing.get_type_hints(kind)
            found += [_Option(g.name, f.name, g.metadata.get("help", ""), _strip_none(inner[g.name]),
                              getattr(default, g.name)) for g in dataclasses.fields(kind)]
        else:
            found.append(_Option(f.name, None, f.metadata.get("help", ""), kind, f.default))
    names = [o.name for o in found]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__}: an option name is used twice: {sorted({n for n in names if names.count(n) > 1})}")
    return found


def _strip_none(kind):
    """``str | None`` -> ``str``; other types unchanged."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _choices(kind) -> tuple | None:
    """A ``Literal``'s values (also of ``tuple[Literal[...], ...]``), else None."""
    if typing.get_origin(kind) is tuple:
        kind = typing.get_args(kind)[0]
    return typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None


def _shown(value: object) -> str:
    """A default as ``--help`` shows it: sequences space-separated, an empty one or text as ''."""
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "''"
    return "''" if value == "" else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """``--config``, ``--debug`` and one flag per option of ``cls`` (a group per section), on ``parser``."""
    parser.add_argument("--config", type=Path, help="YAML file with any of the options below (flags win)")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    groups: dict[str | None, argparse._ArgumentGroup] = {}
    hints = typing.get_type_hints(cls)
    for o in config_options(cls):
        if o.section not in groups:
            summary = (_strip_none(hints[o.section]).__doc__ or "").strip().split("\n")[0] if o.section else ""
            groups[o.section] = parser.add_argument_group(o.section, summary) if o.section else parser
        text = o.help + (" (required)" if o.default is dataclasses.MISSING else f" (default: {_shown(o.default)})")
        choices = _choices(o.kind)
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else o.name.upper()
        group, text = groups[o.section], text.replace("%", "%%")
        if o.kind is bool:
            group.add_argument(flag(o.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif o.sequence:
            group.add_argument(flag(o.name), nargs="*", default=None, metavar=metavar, help=text)
        else:
            group.add_argument(flag(o.name), type=o.element, default=None, metavar=metavar, help=text)


def config_from_args(parser: argparse.ArgumentParser, cls, args: argparse.Namespace):
    """The ``cls`` config of parsed ``args``: the dataclass defaults, then ``--config``'s YAML, then the flags."""
    options = {o.name: o for o in config_options(cls)}
    values: dict[str, object] = {}
    if args.config is not None:
        try:
            loaded = yaml.safe_load(read_text(args.config)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{args.config}: malformed YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}: must be a mapping of option: value, got {type(loaded).__name__}")
        unknown = set(loaded) - set(options)
        if unknown:
            parser.error(f"{args.config}: unknown option(s) {sorted(unknown, key=str)}")
        values.update({name: _from_yaml(args.config, options[name], value) for name, value in loaded.items()})
    for o in options.values():
        given = getattr(args, o.name)
        if given is not None:
            values[o.name] = _sequence(o, given) if o.sequence else given
    return build_config(cls, values)


def build_config(cls, values: dict[str, object]):
    """``cls`` from flat ``{option: value}`` (sections filled from their defaults and the values for them)."""
    options = config_options(cls)
    for o in options:
        if o.default is dataclasses.MISSING and o.name not in values:
            raise ConfigError(f"option '{flag(o.name)}' is required (a flag, or a key of --config)")
    top = {o.name: values[o.name] for o in options if o.section is None and o.name in values}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _strip_none(hints[f.name])
        if dataclasses.is_dataclass(kind):
            default = f.default if f.default is not dataclasses.MISSING else kind()
            own = {o.name: values[o.name] for o in options if o.section == f.name and o.name in values}
            top[f.name] = dataclasses.replace(default, **own) if own else default
    return cls(**top)


def parse_config(cls, description: str, argv: list[str] | None = None, prog: str | None = None):
    """Parse ``argv`` (default ``sys.argv[1:]``) into a ``cls`` config: see the module docstring."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, cls)
    return config_from_args(parser, cls, parser.parse_args(argv))


def _sequence(o: _Option, items: list[str] | str) -> tuple:
    """Flag or YAML text ``["1", "2"]`` / ``"1,2"`` / ``"1 2"`` -> ``(1, 2)`` of the option's element type."""
    words = split_items(items) if isinstance(items, str) else [w for item in items for w in split_items(item)]
    try:
        return tuple(o.element(w) for w in words)
    except ValueError:
        raise ConfigError(f"option '{flag(o.name)}': every value must be {o.element.__name__}, got {words}") from None


def _from_yaml(path: Path, o: _Option, value: object) -> object:
    """A YAML value checked against the option's type (an int is a float; a sequence is a list, or a
    comma- or space-separated string); a flag's text is converted by argparse."""
    if value is None and o.default is None:
        return None
    if o.sequence:
        if isinstance(value, str):
            return _sequence(o, value)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: option '{o.name}' ({flag(o.name)}): must be a list, got {value!r}")
        for item in value:
            _check_yaml_type(path, o.name, item, o.element)
        return tuple(o.element(v) for v in value)
    _check_yaml_type(path, o.name, value, o.element)
    return value


def _check_yaml_type(path: Path, name: str, value: object, kind: type) -> None:
    """A YAML value must be of the option's type (an int is a float)."""
    ok = isinstance(value, bool) if kind is bool else \
        isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
        isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{path}: option '{name}' ({flag(name)}): must be {kind.__name__}, got {value!r}")


def flat_config(cfg) -> dict[str, object]:
    """``{option: value}`` of a config, sections flattened, sequences as lists (JSON / YAML ready)."""
    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    return {o.name: plain(getattr(getattr(cfg, o.section) if o.section else cfg, o.name))
            for o in config_options(type(cfg))}


class _ConfigDumper(yaml.SafeDumper):
    """Block mappings, lists on one line: ``stages: [1, 2]``."""


_ConfigDumper.add_representer(list, lambda dumper, value: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", value, flow_style=True))


def config_yaml(cfg) -> str:
    """The config as the YAML ``--config`` reads: one block per section, under a ``### SECTION`` comment."""
    flat, blocks = flat_config(cfg), {}
    for o in config_options(type(cfg)):
        blocks.setdefault(o.section or "recipe", {})[o.name] = flat[o.name]
    return "\n".join(f"### {name}\n" + yaml.dump(values, Dumper=_ConfigDumper, sort_keys=False, width=1000)
                     for name, values in blocks.items())


def flag(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _bad(name: str, what: str, value: object) -> ConfigError:
    if isinstance(value, tuple):
        value = ",".join(map(str, value))
    return ConfigError(f"option '{flag(name)}': {what}, got {value!r}")


def check_choices(cfg) -> None:
    """Every ``Literal`` field of ``cfg`` is one of its choices; every ``tuple[Literal[...], ...]`` field
    holds distinct ones (an empty tuple is the caller's to refuse)."""
    for name, kind in typing.get_type_hints(type(cfg)).items():
        choices, value = _choices(_strip_none(kind)), getattr(cfg, name)
        if choices is None or value is None:
            continue
        if isinstance(value, tuple):
            if any(v not in choices for v in value) or len(set(value)) != len(value):
                raise _bad(name, "must be distinct items of " + ", ".join(map(str, choices)), value)
        elif value not in choices:
            raise _bad(name, "must be one of " + ", ".join(map(str, choices)), value)


def check_range(cfg, name: str, *, ge: float | None = None, gt: float | None = None, lt: float | None = None,
                le: float | None = None) -> None:
    """``cfg.name`` within the given bounds (NaN never is)."""
    value = getattr(cfg, name)
    bounds = [(ge, ">=", lambda v, b: v >= b), (gt, ">", lambda v, b: v > b), (lt, "<", lambda v, b: v < b),
              (le, "<=", lambda v, b: v <= b)]
    wanted = [f"{op} {b:g}" for b, op, _ in bounds if b is not None]
    if not all(test(value, b) for b, _, test in bounds if b is not None):
        raise _bad(name, "must be " + " and ".join(wanted), value)


def split_items(text: str) -> list[str]:
    """``"a, b,c"`` / ``"a b c"`` -> ``["a", "b", "c"]``."""
    return [t for t in re.split(r"[,\s]+", text) if t]


def check_device(cfg, name: str = "device", *, here: bool = True) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``; with ``here``, CUDA only where torch sees a GPU (a shipped
    config for a GPU is checked without ``here`` on any machine, and again with it before a run)."""
    value = getattr(cfg, name)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(value)):
        raise _bad(name, "must be cpu, cuda or cuda:N", value)
    if here and value.startswith("cuda"):
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
