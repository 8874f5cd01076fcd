"""Data-parallel scaling on the CPU (gloo): 2 processes x micro-batch b against 1 process x micro-batch 2b.

Both arms train the same global batch of the benchmark workload (``bench/baselines/workload.py``) with
``halluremedy.train.dpo.train_preference`` on the same 2 cores: one process with 2 threads, or two
``torchrun`` processes with 1 thread each. A third arm runs the two processes with DDP's gradient
all-reduce switched off (``no_sync`` on every micro-batch), so the communication share is
``1 - t(no sync) / t(sync)``, all measured side by side in one run. Seconds per optimiser step are
the difference of a ``W + N``-step and a ``W``-step run divided by ``N`` (setup and the final
checkpoint cancel out)::

    python bench/ddp_scaling.py [--config tiny|large] [--stage 1|2] [--steps 8] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WARMUP = 2


def worker(args: argparse.Namespace) -> None:
    """One rank: time a WARMUP-step and a WARMUP+steps-step run; rank 0 prints the seconds as JSON."""
    import torch

    sys.path.insert(0, str(BENCH))
    from baselines import CONFIGS, build_workload

    from halluremedy.train import loop
    from halluremedy.train.distributed import barrier, init_data_parallel
    from halluremedy.train.dpo import PreferenceObjective, Reference, train_preference
    from halluremedy.train.loop import LoopConfig

    shard, _ = init_data_parallel("cpu")
    torch.set_num_threads(2 // shard.world)
    if args.no_sync:  # the no-communication arm: every micro-batch under DDP's no_sync
        wrap = loop.wrap_micro_step

        def wrap_without_sync(model, micro_step):
            step_fn, sync = wrap(model, micro_step)
            return step_fn, lambda last: sync(False)

        loop.wrap_micro_step = wrap_without_sync
    config = CONFIGS[args.config]
    workload = build_workload(config, args.data)
    batches = workload.batches
    batches.batch_size = config.pairs // shard.world
    objective = PreferenceObjective(stage=args.stage, beta=0.1)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (WARMUP, WARMUP + args.steps):
            policy = workload.fresh_policy().train()
            barrier()
            start = time.perf_counter()
            train_preference(policy, batches, objective, Reference("adapter"),
                             LoopConfig(steps=steps, lr=1e-4, log_every=10**6), f"{tmp}/{steps}", seed=0)
            barrier()
            seconds[steps] = time.perf_counter() - start
    if shard.is_main:
        print(json.dumps({"step_s": (seconds[WARMUP + args.steps] - seconds[WARMUP]) / args.steps}))


def launch(args: argparse.Namespace, procs: int, no_sync: bool = False) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd += [__file__, "--worker", "--config", args.config, "--stage", str(args.stage), "--steps", str(args.steps),
            "--data", args.data] + (["--no-sync"] if no_sync else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // procs), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["step_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="benchmark geometry (bench/baselines/workload.py CONFIGS)")
    parser.add_argument("--stage", type=int, default=1, choices=(1, 2))
    parser.add_argument("--steps", type=int, default=8, help="timed optimiser steps per arm")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-sync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as data:
        args.data = data
        sys.path.insert(0, str(BENCH))
        from baselines import CONFIGS, build_workload

        build_workload(CONFIGS[args.config], data)  # the scene data, once, before the ranks read it
        one, two, two_no_sync = launch(args, 1), launch(args, 2), launch(args, 2, no_sync=True)
    result = {"config": args.config, "stage": args.stage, "steps": args.steps,
              "step_s_1proc_2threads": one, "step_s_2procs_1thread": two, "step_s_2procs_no_sync": two_no_sync,
              "speedup_2procs": one / two, "communication_share": 1 - two_no_sync / two}
    print(f"| {args.config}, stage {args.stage} | s/step | vs 1 process |\n|---|---|---|\n"
          f"| 1 process x 2 threads, micro-batch 2b | {one:.4f} | 1.00 |\n"
          f"| 2 processes x 1 thread, micro-batch b (gloo) | {two:.4f} | {one / two:.2f} |\n"
          f"| 2 processes, gradient all-reduce off | {two_no_sync:.4f} | {one / two_no_sync:.2f} |\n\n"
          f"communication share of the 2-process step: {result['communication_share']:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
