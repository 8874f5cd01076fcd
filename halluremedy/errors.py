"""The one error path for problems in what the user gave us: files, records and options.

* :class:`UserError`: the base; its message says where (``FILE:LINE: field 'x': ...``, or
  ``option '--flag': ...``) and what is wrong.
* :class:`DatasetError`: a malformed or unusable input file (also importable from
  :mod:`halluremedy.data.coco`, where it was first defined).
* :class:`ConfigError`: an option out of range, of the wrong kind, or not allowed with another.

Every front door (``halluremedy`` and each ``scripts/*.py``) runs its ``main`` through
:func:`run_main`: a ``UserError`` becomes one line on stderr, ``halluremedy: error: <message>``,
and exit status 2. ``--debug`` (anywhere before a ``--``; removed before ``main`` parses it) or
``HALLUREMEDY_DEBUG=1`` re-raises it for the traceback. Any other exception is a bug and keeps its
traceback: only these classes are reported as the user's error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["ConfigError", "DatasetError", "UserError", "one_line", "run_main"]

DEBUG_FLAG = "--debug"
DEBUG_ENV = "HALLUREMEDY_DEBUG"


class UserError(ValueError):
    """A problem in the user's input; the message names the place (file:line, or the option)."""


class DatasetError(UserError):
    """A dataset, preference or conversation file is malformed; the message names file, record and field."""


class ConfigError(UserError):
    """An option is invalid: ``option '--batch-size': must be >= 1, got 0``."""


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(message).split())


def _own_args(argv: list[str]) -> list[str]:
    """The arguments before a ``--`` (after it they are passed on, e.g. to ``train_dpo.py``)."""
    return argv[:argv.index("--")] if "--" in argv else argv


def run_main(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` (``argv`` defaults to ``sys.argv[1:]``, ``--debug`` removed) and return its
    exit status (``None`` counts as 0). A :class:`UserError` prints ``halluremedy: error: ...`` as a
    single line on stderr and raises ``SystemExit(2)``, unless debugging was asked for."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, rest = _own_args(argv), argv[len(_own_args(argv)):]
    debug = DEBUG_FLAG in own or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in own if a != DEBUG_FLAG] + rest
    try:
        status = main(argv)
    except UserError as e:
        if debug:
            raise
        print(f"halluremedy: error: {one_line(e)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return int(status or 0)
