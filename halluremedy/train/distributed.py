"""Data parallelism on PyTorch's own engine: ``torchrun`` + ``torch.distributed`` + DDP.

``torchrun --nproc_per_node N scripts/train_dpo.py ...`` starts N processes; each calls
:func:`init_data_parallel` and trains on its shard of every optimiser step's records:

* one seeded global order of records (``EpochSampler``); global micro-batch ``i`` is records
  ``[i * b * N, (i + 1) * b * N)`` of it, and rank ``r`` takes the ``r``-th slice of ``b``, so N
  processes with micro-batch ``b`` compute the step one process with micro-batch ``N * b`` does;
* the micro-step runs inside ``DistributedDataParallel.forward`` (:class:`MicroStepModule`), so
  DDP's reducer all-reduces (averages) the gradients of the packed forward, which calls the model's
  submodules directly; ``no_sync`` skips the all-reduce on all but the last micro-batch of a step;
* losses whose denominator is a token count (SFT) are scaled by the global count
  (:func:`global_token_scale`), so averaging over ranks gives the single-process token mean;
* metrics are averaged over ranks; checkpoints, metrics files, plots and evaluation are rank 0's;
  every rank's RNG state is checkpointed, so a resume with the same world size is exact.

Backend: NCCL on CUDA, gloo on CPU (the tests run 2 gloo processes on the tiny model).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Shard:
    """This process's place in the data-parallel group (``rank`` of ``world``)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_shard() -> Shard:
    """The initialised default process group's rank and size, or the single-process ``Shard()``."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def init_data_parallel(device: str = "cpu") -> tuple[Shard, str]:
    """Join the group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment), else stay alone.

    Returns ``(shard, device)``; on CUDA each rank takes GPU ``LOCAL_RANK`` (``"cuda:k"``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if cuda else "gloo")
    return current_shard(), device


def barrier() -> None:
    if current_shard().world > 1:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over ranks (unchanged when alone)."""
    world = current_shard().world
    if world == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if current_shard().world == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def all_gather_stacked(tensor: torch.Tensor) -> torch.Tensor:
    """(world, *shape): every rank's ``tensor`` (same shape on all ranks)."""
    world = current_shard().world
    if world == 1:
        return tensor[None]
    out = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(out, tensor.contiguous())
    return torch.stack(out)


def global_token_scale(local_tokens: torch.Tensor) -> torch.Tensor:
    """``world * local / global`` token count: a loss that is a mean over this rank's tokens, times
    this, averages over ranks (as DDP averages gradients) to the mean over every rank's tokens."""
    shard = current_shard()
    if shard.world == 1:
        return torch.ones((), device=local_tokens.device)
    total = all_reduce_sum(local_tokens.float())
    return shard.world * local_tokens.float() / total


class MicroStepModule(nn.Module):
    """``forward(step, micro)`` = ``micro_step(step, micro)`` on ``model``, as a module DDP can wrap.

    DDP prepares its gradient all-reduce in ``forward``; the micro-step reaches the model's
    submodules directly (packed prefix-shared forwards), so it must run inside this forward."""

    def __init__(self, model: nn.Module, micro_step: Callable[[int, int], tuple[torch.Tensor, dict]]):
        super().__init__()
        self.model = model
        self.micro_step = micro_step

    def forward(self, step: int, micro: int) -> tuple[torch.Tensor, dict]:
        return self.micro_step(step, micro)


def wrap_micro_step(model: nn.Module, micro_step: Callable[[int, int], tuple[torch.Tensor, dict]]
                    ) -> tuple[Callable[[int, int], tuple[torch.Tensor, dict]], Callable[[bool], object]]:
    """``(step_fn, sync)``: the micro-step that all-reduces gradients across ranks, and
    ``sync(last)``, the context to run micro-batch ``not last`` without that all-reduce.

    Alone, ``micro_step`` itself and a null context."""
    if current_shard().world == 1:
        return micro_step, lambda last: contextlib.nullcontext()
    device = next(model.parameters()).device
    ddp = nn.parallel.DistributedDataParallel(MicroStepModule(model, micro_step),
                                              device_ids=[device.index] if device.type == "cuda" else None,
                                              forward_sync_buffers=False)
    return ddp, lambda last: contextlib.nullcontext() if last else ddp.no_sync()
