"""Count the host syncs of a training step: device values read back by the host.

A host sync stalls the CPU until the GPU has drained its queue, so a step with one per micro-batch
cannot keep the GPU fed. They come from reading a tensor's value on the host (``.item()``,
``int(t)``, ``float(t)``, ``bool(t)``, ``if t:``, ``.tolist()``) and from ops whose output shape
depends on values (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``,
``repeat_interleave`` without ``output_size``).

:class:`SyncCounter` counts those on any device, the CPU included, so a test without a GPU can
assert a step's budget; on CUDA, ``torch.cuda.set_sync_debug_mode`` is the ground truth
(:func:`cuda_sync_warnings`). Host-side work that legitimately reads CPU tensors (building a batch,
optimiser step counters, checkpoints) runs inside :meth:`SyncCounter.paused`.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# ops that read a value back, or whose output shape depends on values
_VALUE_OPS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
              aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
              aten.unique_consecutive.default}
_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class SyncCounter(TorchDispatchMode):
    """Counts host syncs while active: ``counts`` (op name -> n), ``where`` (one short stack per sync).

    ``.tolist()`` does not pass through the dispatcher: it is counted by wrapping ``torch.Tensor.tolist``
    while the counter is active.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.where: list[str] = []
        self._paused = 0
        self._tolist = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _record(self, name: str) -> None:
        if self._paused:
            return
        self.counts[name] += 1
        frames = [f for f in traceback.extract_stack()[:-3] if "/torch/" not in f.filename]
        self.where.append(f"{name} at " + " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                                                   for f in frames[::-1][:4]))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Host-side work (CPU tensors the device never holds) inside this block is not counted."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _VALUE_OPS:
            self._record(func.name())
        elif func in _INDEX_OPS and _bool_index(args):
            self._record(f"{func.name()} (boolean mask)")
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self._record(func.name())
        return func(*args, **kwargs)

    def __enter__(self):
        original = torch.Tensor.tolist
        counter = self

        def tolist(tensor):
            counter._record("tolist")
            return original(tensor)

        self._tolist, torch.Tensor.tolist = original, tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


def paused(counter: SyncCounter | None, fn):
    """``fn`` run inside ``counter.paused()`` (``fn`` itself when there is no counter)."""
    if counter is None:
        return fn

    def run(*args, **kwargs):
        with counter.paused():
            return fn(*args, **kwargs)

    return run


@contextlib.contextmanager
def cuda_sync_warnings() -> Iterator[list[str]]:
    """CUDA's own sync detector: the messages of every synchronising call made inside the block."""
    caught: list[str] = []
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    caught += [str(r.message).splitlines()[0] for r in records if "synchroniz" in str(r.message)]

