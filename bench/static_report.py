"""Static GPU report for vlm_kernels: what compiling for sm_80 / sm_90 and a cost model say, no GPU needed.

For every launch the dispatcher makes (``vlm_kernels.aot.dispatcher_launches(full=True)``):
registers per thread, spill bytes and shared memory per block from the sm_80 and sm_90 compiles
(ptxas -v); and, at a LLaVA-1.5-7B POVID stage-2 shape (D = 4096, V = 32000, N response rows per
step, K targets), the bytes and FLOPs of one call with the A100 floor time
``max(bytes / 1.5 TB/s, FLOPs / peak)``, peak = 312 TFLOP/s for bf16 (fp32: see FLOPS_PER_S).

Bytes are compulsory HBM traffic: every operand read once and every output written once, i.e.
perfect L2 reuse of the hidden rows re-read by each vocabulary slice / tile. fp32 atomic adds
(backward) are counted separately: their buffers (N x D for d_hidden) fit in L2, so they cost L2
atomic throughput rather than HBM bytes, and the floor does not include them.

Run: ``python bench/static_report.py [N_ROWS]`` with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import triton
from vlm_kernels._launch import Launch
from vlm_kernels._vocab import StreamConfig, TileConfig, vocab_split
from vlm_kernels.aot import compile_launch, dispatcher_launches, resource_usage

D, V = 4096, 32000  # LLaVA-1.5-7B hidden size and vocabulary
IMAGES = (16, 3, 336, 336)  # a batch of CLIP-resized images for the fused noise placement
HBM_BYTES_PER_S = 1.5e12  # A100
# A100 dense peaks: bf16/fp16 tensor cores; fp32 dots on tensor cores (TF32) or, as torch's default
# "highest" matmul precision asks (DOT_PRECISION "ieee"), on the CUDA cores.
FLOPS_PER_S = {"bf16": 312e12, "tf32": 156e12, "ieee": 19.5e12}


def cost(launch: Launch, n_rows: int) -> dict[str, float]:
    """Bytes, FLOPs (and their peak rate) and fp32 atomic adds of ``launch``'s kernel at the LLaVA shape."""
    args, name = launch.args, launch.kernel.fn.__name__
    if name == "_diffusion_noise_kernel":
        numel = IMAGES[0] * IMAGES[1] * IMAGES[2] * IMAGES[3]
        bytes_ = numel * (args["images_ptr"].element_size() + args["out_ptr"].element_size())
        return {"bytes": bytes_, "flops": 3 * numel, "flops_per_s": FLOPS_PER_S["ieee"], "atomics": 0}
    size = args["hidden_ptr"].element_size()
    rate = FLOPS_PER_S["bf16" if size == 2 else args["DOT_PRECISION"]]
    tiles = TileConfig(args["BLOCK_N"], args["BLOCK_V"], args["BLOCK_D"], 1, 1)
    k = args.get("K", 0)
    operands = (V * D + n_rows * D) * size + n_rows * k * 8  # weight, hidden rows, targets
    if name == "_linear_logprob_backward_kernel":
        train_w = args["COMPUTE_DW"]
        atomics = triton.cdiv(V, tiles.block_v) * n_rows * D
        atomics += triton.cdiv(n_rows, tiles.block_n) * V * D if train_w else 0
        bytes_ = operands + n_rows * (k + 2) * 4 + (n_rows * D + (V * D if train_w else 0)) * 4
        flops = (6 if train_w else 4) * n_rows * V * D
        return {"bytes": bytes_, "flops": flops, "flops_per_s": rate, "atomics": atomics}
    n_splits, _ = vocab_split(n_rows, V, StreamConfig(tiles, tiles), torch.device("cpu"))
    per_split = (1 + k) * 4 if name == "_linear_logprob_forward_kernel" else 8  # lse + K logits | max + index
    bytes_ = operands + n_rows * n_splits * per_split
    return {"bytes": bytes_, "flops": 2 * n_rows * V * D, "flops_per_s": rate, "atomics": 0}


def report(n_rows: int, archs: tuple[int, ...] = (80, 90)) -> list[str]:
    """Markdown table, one row per (dispatcher case, kernel)."""
    head = ["case", "kernel"]
    head += [f"sm_{a} regs/spill B/smem KiB" for a in archs]
    head += ["MB/call", "GFLOP/call", "fp32 atomics (M)", "A100 floor us", "bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in dispatcher_launches(full=True):
        for launch in case.launches:
            usage: list[dict[str, Any]] = [resource_usage(compile_launch(launch, arch)) for arch in archs]
            c = cost(launch, n_rows)
            t_mem, t_flop = c["bytes"] / HBM_BYTES_PER_S, c["flops"] / c["flops_per_s"]
            row = [case.name, launch.kernel.fn.__name__.strip("_").removesuffix("_kernel")]
            row += [f"{u['registers']}/{u['spill_bytes']}/{u['shared_bytes'] / 1024:.0f}" for u in usage]
            row += [
                f"{c['bytes'] / 1e6:.1f}",
                f"{c['flops'] / 1e9:.1f}",
                f"{c['atomics'] / 1e6:.0f}",
                f"{max(t_mem, t_flop) * 1e6:.0f}",
                "memory" if t_mem >= t_flop else "compute",
            ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n_rows", type=int, nargs="?", default=256, help="response rows per step (default: 256)")
    rows = parser.parse_args().n_rows
    print(f"LLaVA-1.5-7B shape: N = {rows} response rows, D = {D}, V = {V}; noise on {IMAGES} images\n")
    print("\n".join(report(rows)))
