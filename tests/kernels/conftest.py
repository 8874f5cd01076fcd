"""Run checks in a process whose Triton is in the mode they need: interpreted (CPU) or compiled.

Triton fixes its mode when it is first imported: ``@triton.jit`` -- on our kernels and on
``triton.language``'s own library functions -- reads ``TRITON_INTERPRET`` at definition. By the
time this file runs, triton is normally already imported in compiled mode (``torch._dynamo``
imports it, via transformers in ``tests/conftest.py``), so setting the variable here would be too
late. Instead the fixtures below hand a check function to a helper process started in the right
mode (spawned, with the variable set or removed before anything is imported there), or call it
in-process when this process already is in that mode (e.g. ``TRITON_INTERPRET=1 pytest
tests/kernels``). This leaves the environment of other test directories untouched.

Check functions are passed by reference, so they live at module level in the test files, which
the helper imports by name (pytest's default ``prepend`` import mode puts this folder on sys.path).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import triton.language
from triton.runtime.interpreter import InterpretedFunction

Runner = Callable[..., Any]

# triton's own library functions were built interpreted iff this process imported triton with
# TRITON_INTERPRET=1 set.
_THIS_PROCESS_INTERPRETED = isinstance(triton.language.zeros, InterpretedFunction)


def _runner(interpreted: bool) -> Iterator[Runner]:
    if interpreted == _THIS_PROCESS_INTERPRETED:
        yield lambda fn, *args: fn(*args)
        return
    saved = os.environ.pop("TRITON_INTERPRET", None)
    if interpreted:
        os.environ["TRITON_INTERPRET"] = "1"
    try:  # the helper inherits the environment when it starts: start it now, then restore ours
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        pool.submit(int).result()
    finally:
        os.environ.pop("TRITON_INTERPRET", None)
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    with pool:
        yield lambda fn, *args: pool.submit(fn, *args).result()


@pytest.fixture(scope="session")
def interpreted() -> Iterator[Runner]:
    """``interpreted(fn, *args)`` calls ``fn(*args)`` where Triton kernels run on the CPU interpreter."""
    yield from _runner(interpreted=True)


@pytest.fixture(scope="session")
def compiled() -> Iterator[Runner]:
    """``compiled(fn, *args)`` calls ``fn(*args)`` where kernels are JIT functions (AOT compile)."""
    yield from _runner(interpreted=False)
