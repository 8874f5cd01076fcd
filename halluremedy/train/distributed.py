"""Data parallelism on PyTorch's own engine: ``torchrun`` + ``torch.distributed`` + DDP.

``torchrun --nproc_per_node N scripts/train_dpo.py ...`` starts N processes; each calls
:func:`init_data_parallel` and trains on its shard of every optimiser step's records:

* one seeded global order of records (``EpochSampler``); global micro-batch ``i`` is records
  ``[i * b * N, (i + 1) * b * N)`` of it, and rank ``r`` takes the ``r``-th slice of ``b``, so N
  processes with micro-batch ``b`` compute the step one process with micro-batch ``N * b`` does;
* the micro-step runs inside the wrapper's forward (:class:`MicroStepModule`), so the gradients of
  the packed forward, which calls the model's submodules directly, are averaged over ranks:
  LoRA runs (a peft model) use ``DistributedDataParallel``, whose reducer all-reduces the adapters'
  gradients (``no_sync`` on all but the last micro-batch of a step); full fine-tunes use FSDP2
  (``fully_shard`` on every decoder layer and on the wrapper: parameters, gradients and optimiser
  state sharded over ranks, each layer all-gathered in its own forward, the rest in the wrapper's);
* losses whose denominator is a token count (SFT) are scaled by the global count
  (:func:`global_token_scale`), so averaging over ranks gives the single-process token mean;
* metrics are averaged over ranks; checkpoints, metrics files, plots and evaluation are rank 0's;
  every rank's RNG state is checkpointed, so a resume with the same world size is exact.

Backend: NCCL on CUDA, gloo on CPU (the tests run 2 gloo processes on the tiny model).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor


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
        atexit.register(dist.destroy_process_group)  # else gloo's threads abort the process at exit
    return current_shard(), device


def barrier() -> None:
    if current_shard().world > 1:
        dist.barrier()


@contextlib.contextmanager
def main_rank_first():
    """Rank 0 runs the block first (e.g. generating data that is absent), the others after it (reading it)."""
    if not current_shard().is_main:
        barrier()
    yield
    if current_shard().is_main:
        barrier()


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
    """``(step_fn, sync)``: the micro-step whose gradients are averaged across ranks, and
    ``sync(last)``, the context to run a micro-batch in (gradients are reduced only when ``last``).

    Alone, ``micro_step`` itself and a null context. A peft (LoRA) model gets DDP; any other model
    is sharded in place with FSDP2 (build its optimiser after this call)."""
    if current_shard().world == 1:
        return micro_step, lambda last: contextlib.nullcontext()
    wrapper = MicroStepModule(model, micro_step)
    if hasattr(model, "peft_config"):
        device = next(model.parameters()).device
        ddp = nn.parallel.DistributedDataParallel(wrapper, device_ids=[device.index] if device.type == "cuda" else None,
                                                  forward_sync_buffers=False)
        return ddp, lambda last: contextlib.nullcontext() if last else ddp.no_sync()
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(wrapper)

    @contextlib.contextmanager
    def sync(last: bool):
        wrapper.set_requires_gradient_sync(last)
        yield

    return wrapper, sync


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The language model's transformer blocks (FSDP2's units)."""
    layers = model.get_decoder().layers if hasattr(model, "get_decoder") else None
    if layers is None:
        raise TypeError(f"cannot find the decoder layers of a {type(model).__name__} to shard")
    return list(layers)


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in model.modules()) or \
        any(isinstance(p, DTensor) for p in model.parameters())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) value gathered in full on every rank (a collective); others unchanged."""
    return t.full_tensor() if isinstance(t, DTensor) else t


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0's CPU when ``model`` is sharded (a collective), else None."""
    return get_model_state_dict(model, options=_FULL) if is_sharded(model) else None


def save_model_on_main(model: nn.Module, processor, path) -> None:
    """``save_model`` by rank 0, with a sharded model's weights gathered from every rank; the others
    wait until it is on disk."""
    from halluremedy.models.llava import save_model

    gathered = full_model_state(model)
    if current_shard().is_main:
        save_model(model, processor, path, state_dict=gathered)
    barrier()


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser state keyed by parameter name, gathered in full (a collective)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_model_state(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Full (unsharded) ``weights`` of some parameters into a sharded ``model``."""
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    # strict=False: a parameter that never had a gradient (e.g. the vision tower's unused last layer)
    # has no Adam state to restore, exactly as in the run that saved it.
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))
