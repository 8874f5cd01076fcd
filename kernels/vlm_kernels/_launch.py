"""Backend choice and the single place where Triton kernels are launched.

Every launcher in this package calls :func:`launch` instead of ``kernel[grid](...)``. That lets
:func:`capture_launches` record the exact launches the dispatcher makes (kernel, grid, arguments,
``num_warps``/``num_stages``) without running them, which is what the ahead-of-time compile check
and the static GPU report in :mod:`vlm_kernels.aot` are built on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import triton
import triton.language as tl

Impl = Literal["triton", "torch"]


def _interpreted() -> bool:
    """``@triton.jit`` reads TRITON_INTERPRET when a function is *defined*: triton.language's own
    functions when triton is first imported, this package's kernels when it is imported. Kernels can
    run on the CPU only if both were built interpreted."""
    if not triton.knobs.runtime.interpret:
        return False
    from triton.runtime.interpreter import InterpretedFunction  # the interpreter needs numpy; nothing else does

    return isinstance(tl.zeros, InterpretedFunction)


INTERPRETED: bool = _interpreted()


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``kernel[grid](**args, **options)``."""

    kernel: Any
    grid: tuple[int, ...]
    args: dict[str, Any]
    options: dict[str, Any]


_captured: list[Launch] | None = None


@contextlib.contextmanager
def capture_launches() -> Iterator[list[Launch]]:
    """Record launches instead of running them; ``impl="triton"`` is then accepted on CPU tensors.

    The launchers still allocate and post-process their buffers, so what they return inside this
    context is garbage: use it only to learn which kernels, with which arguments, would run.
    """
    global _captured
    previous, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = previous


def launch(kernel: Any, grid: tuple[int, ...], *, num_warps: int, num_stages: int, **args: Any) -> None:
    """Run ``kernel`` on ``grid`` (or record it inside :func:`capture_launches`).

    FMA contraction is requested explicitly so the numerics do not move with Triton's default
    (enabled up to 3.9, announced to flip in 3.10).
    """
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True}
    if _captured is not None:
        _captured.append(Launch(kernel, grid, args, options))
        return
    kernel[grid](**args, **options)


def resolve_impl(impl: str, tensor: torch.Tensor) -> Impl:
    """Map ``impl`` in {"auto", "triton", "torch"} to the backend that will run on ``tensor``.

    ``"auto"`` is Triton for CUDA tensors and torch otherwise. ``"triton"`` on a CPU tensor needs
    ``TRITON_INTERPRET=1`` in the environment before triton is first imported.
    """
    if impl == "auto":
        return "triton" if tensor.is_cuda else "torch"
    if impl == "torch":
        return "torch"
    if impl != "triton":
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if not (tensor.is_cuda or INTERPRETED or _captured is not None):
        raise ValueError("impl='triton' on a CPU tensor needs TRITON_INTERPRET=1 set before triton is first imported")
    return "triton"


def upcast_dot(tensor: torch.Tensor) -> bool:
    """Whether kernels must feed ``tl.dot`` fp32 operands for ``tensor``'s inputs.

    Triton's interpreter (3.9) multiplies the raw uint16 storage of bf16 operands in ``tl.dot``;
    upcasting first is exact (bf16 x bf16 products fit in fp32), so interpreted runs convert. GPU
    launches, and the captured launches that stand for them, keep bf16 operands.
    """
    return tensor.dtype == torch.bfloat16 and not tensor.is_cuda and _captured is None
