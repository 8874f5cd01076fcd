"""Ahead-of-time compilation of every kernel of this package for a GPU target, without a GPU.

:func:`dispatcher_launches` runs the public ops on small CPU stand-in tensors inside
:func:`~vlm_kernels._launch.capture_launches`, so it sees exactly the kernels, constexprs and launch
options the dispatcher picks on a GPU for each case below; the stand-in shapes keep the real
shapes' divisibility by 16 (D = 4096, V = 32000), which is all that argument specialisation looks
at. :func:`compile_launch` compiles one captured launch for ``GPUTarget("cuda", arch, 32)`` the way
``JITFunction.run`` would, and :func:`resource_usage` reads registers, spills and shared memory.

Kernels must be JIT functions here: run with ``TRITON_INTERPRET`` unset, e.g.
``python -m vlm_kernels.aot 80 90``, which prints one JSON line per (kernel case, arch).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, CompiledKernel, make_backend
from triton.compiler import compile as triton_compile
from triton.runtime.jit import create_function_from_signature

from ._launch import Launch, capture_launches
from .diffusion_noise import diffusion_noise
from .linear_argmax import linear_argmax
from .linear_logprob import linear_logprob

_N, _D, _V = 37, 128, 320  # stand-ins: N odd, D and V divisible by 16 like 4096 / 32000


@dataclass(frozen=True)
class Case:
    """One dispatcher configuration: a name and the launches it makes."""

    name: str
    launches: tuple[Launch, ...]


def _logprob_case(dtype: torch.dtype, k: int, bias: bool, train_weight: bool) -> Case:
    hidden = torch.randn(_N, _D, dtype=dtype, requires_grad=True)
    weight = torch.randn(_V, _D, dtype=dtype, requires_grad=train_weight)
    b = torch.randn(_V, dtype=dtype, requires_grad=True) if bias else None
    targets = torch.randint(0, _V, (_N, k))
    targets[::3] = -100
    with capture_launches() as launches:
        linear_logprob(hidden, weight, targets, b, impl="triton").sum().backward()
    name = f"linear_logprob {str(dtype)[6:]} K={k}{' bias' if bias else ''}{' train-W' if train_weight else ''}"
    return Case(name, tuple(launches))


def _argmax_case(dtype: torch.dtype) -> Case:
    with capture_launches() as launches:
        linear_argmax(torch.randn(_N, _D, dtype=dtype), torch.randn(_V, _D, dtype=dtype), impl="triton")
    return Case(f"linear_argmax {str(dtype)[6:]}", tuple(launches))


def _noise_case(out_dtype: torch.dtype) -> Case:
    with capture_launches() as launches:
        diffusion_noise(torch.rand(2, 3, 336, 336), 500, seed=1, out_dtype=out_dtype, impl="triton")
    return Case(f"diffusion_noise ->{str(out_dtype)[6:]}", tuple(launches))


def dispatcher_launches(full: bool = False) -> list[Case]:
    """Captured dispatcher launches per case.

    The default set compiles every kernel with every tile configuration the dispatcher has
    (bf16 and fp32 tiles) and every optional code path switched on (bias, trainable weight).
    ``full=True`` adds the trainer's exact variants (K = 1 and 2, frozen weight, no bias).
    """
    cases = [
        _logprob_case(torch.bfloat16, 2, bias=True, train_weight=True),
        _logprob_case(torch.float32, 2, bias=True, train_weight=True),
        _argmax_case(torch.bfloat16),
        _argmax_case(torch.float32),
        _noise_case(torch.bfloat16),
    ]
    if full:
        cases += [
            _logprob_case(torch.bfloat16, 1, bias=False, train_weight=False),
            _logprob_case(torch.bfloat16, 2, bias=False, train_weight=False),
            _noise_case(torch.float32),
        ]
    return cases


def compile_launch(launch: Launch, arch: int) -> CompiledKernel:
    """Compile ``launch`` for ``sm_<arch>`` with the argument specialisation the JIT would use.

    Mirrors ``JITFunction.run`` (binder, then ``_pack_args``), private Triton API checked against
    Triton 3.9: the integer/pointer divisibility attributes then match what a real launch compiles.
    """
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kernel = launch.kernel
    kwargs = {**launch.args, **launch.options}
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return triton_compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def resource_usage(compiled: CompiledKernel) -> dict[str, int]:
    """Registers per thread, spill bytes (stores + loads) and shared memory bytes of a compiled kernel.

    Registers and spills come from ``ptxas -v`` on the kernel's PTX (the same ptxas Triton uses);
    shared memory is Triton's dynamic allocation (``metadata.shared``) plus any static shared.
    """
    from triton.backends.nvidia.compiler import get_ptxas

    arch = compiled.metadata.target.arch
    ptx = compiled.asm["ptx"]
    gpu_name = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "kernel.ptx")
        src.write_text(ptx)
        log = subprocess.run(
            [
                get_ptxas(arch).path,
                "-v",
                "--regAllocOptLevel=2",
                f"--gpu-name={gpu_name}",
                str(src),
                "-o",
                str(Path(tmp, "k.o")),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stderr

    def number(pattern: str) -> int:
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_bytes": number(r"(\d+) bytes spill stores") + number(r"(\d+) bytes spill loads"),
        "shared_bytes": compiled.metadata.shared + number(r"(\d+) bytes smem"),
    }


def main(argv: list[str]) -> None:
    """``python -m vlm_kernels.aot [--full] ARCH...``: compile every case, one JSON line per kernel."""
    full = "--full" in argv
    archs = [int(a) for a in argv if a != "--full"] or [80, 90]
    for case in dispatcher_launches(full):
        for launch in case.launches:
            for arch in archs:
                compiled = compile_launch(launch, arch)
                record = {
                    "case": case.name,
                    "kernel": compiled.name,
                    "arch": arch,
                    "grid": launch.grid,
                    **launch.options,
                    "constexprs": {p.name: launch.args[p.name] for p in launch.kernel.params if p.is_constexpr},
                    **resource_usage(compiled),
                }
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
