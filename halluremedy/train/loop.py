"""The one optimisation loop every recipe (SFT, reflective SFT, DPO) runs.

A recipe supplies ``micro_step(step, micro) -> (loss, metrics)``: the forward of one micro-batch
(``metrics["batch"]`` names it in errors and is not logged),
chosen deterministically from ``(step, micro)`` so a resumed run sees exactly the batches an
uninterrupted one would. The loop does the rest: AdamW, cosine schedule with warmup, gradient
accumulation, clipping, bf16 autocast on CUDA, the non-finite guard, metrics JSONL, atomic
checkpoints and exact resume.

Non-finite policy: a step whose loss or gradient norm is not finite is never applied. Its gradients
are dropped, the optimiser and scheduler do not move, and the step is counted (``nonfinite_steps`` in
the metrics). Up to ``LoopConfig.max_nonfinite_steps`` such steps are skipped (default 0); the next
one stops the run with :class:`NonFiniteStep` (a ``FloatingPointError``) naming the step, the micro-batch and the last good
checkpoint (or saying there is none). Weights are checked before every save, so a checkpoint never
holds a non-finite value.

Resume: ``OUT/settings.json`` holds everything that defines the run (the loop settings plus what the
recipe passes as ``settings``). ``resume=True`` continues only when the new settings are identical;
a changed field stops with :class:`ResumeMismatch` naming it, unless ``allow_changes`` (then the new
learning rate, weight decay and schedule length apply from the next step, and the optimiser moments
are kept).

Checkpoint layout (``OUT/checkpoint/``, replaced atomically; no pickle anywhere, so loading a
checkpoint from a shared directory runs no code)::

    trainable.safetensors   every parameter with requires_grad (LoRA adapters, or the full model)
    state.safetensors       optimiser moments and RNG states
    state.json              optimiser param groups, scheduler state, step, skipped-step count
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from halluremedy.errors import ConfigError, UserError
from halluremedy.train.distributed import (
    all_gather_stacked,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    current_shard,
    full_tensor,
    is_sharded,
    load_model_state,
    load_optimizer_state,
    optimizer_state,
    wrap_micro_step,
)

MicroStep = Callable[[int, int], tuple[torch.Tensor, dict[str, float]]]
SETTINGS, CHECKPOINT = "settings.json", "checkpoint"


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    lr: float
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    bf16: bool = True  # autocast to bf16 where the device is CUDA; ignored on CPU
    max_nonfinite_steps: int = 0  # steps with a non-finite loss or gradient skipped before the run stops


class NonFiniteStep(FloatingPointError, UserError):
    """A step whose loss or gradient norm is not finite, past the allowed skips: the run stops before
    applying it (a user-facing error: one line through ``run_main``; usually the learning rate)."""


class ResumeMismatch(ConfigError):
    """``--resume`` into a run directory made with other settings; the message names the fields."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter, in full on the CPU (a collective when the model is FSDP-sharded)."""
    return {n: full_tensor(p.detach()).cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _split_tensors(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """``obj`` as JSON: each tensor moved into ``tensors`` under its path and replaced by a reference;
    dicts become ``[[key, value], ...]`` pairs so integer keys (optimizer state) survive."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"tensor": path}
    if isinstance(obj, dict):
        return {"dict": [[k, _split_tensors(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"tuple" if isinstance(obj, tuple) else "list":
                [_split_tensors(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"float": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path or 'top level'} in a checkpoint")


def _join_tensors(obj: Any, tensors: Mapping[str, torch.Tensor], where: Path) -> Any:
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (kind, value), = obj.items()
        if kind == "tensor" and value in tensors:
            return tensors[value]
        if kind == "dict":
            return {k: _join_tensors(v, tensors, where) for k, v in value}
        if kind in ("list", "tuple"):
            items = [_join_tensors(v, tensors, where) for v in value]
            return tuple(items) if kind == "tuple" else items
        if kind == "float":
            return float(value)
    raise ValueError(f"{where}: malformed checkpoint state entry {str(obj)[:80]}")


def rng_states() -> dict[str, torch.Tensor]:
    """Every rank's RNG states, ``(world, n)`` uint8 per generator (a collective: call on all ranks)."""
    rng = {"torch": all_gather_stacked(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = all_gather_stacked(torch.cuda.get_rng_state())
    return rng


def save_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer, scheduler, step: int,
                    nonfinite_steps: int = 0) -> None:
    """Write ``out_dir/checkpoint`` through a temporary directory and a rename.

    Under torchrun every rank calls it (weights, optimiser state and RNG states are gathered) and
    rank 0 writes. Refuses (``FloatingPointError``) to write weights that are not all finite."""
    weights = trainable_state(model)
    bad = [n for n, w in weights.items() if not bool(torch.isfinite(w).all())]
    if bad:
        raise FloatingPointError(f"not saving step {step}: non-finite values in {len(bad)} trainable tensors "
                                 f"({bad[0]}, ...)")
    optim = optimizer_state(model, optimizer) if is_sharded(model) else optimizer.state_dict()
    rng = rng_states()
    if not current_shard().is_main:
        return
    tensors: dict[str, torch.Tensor] = {}
    state = _split_tensors({"optimizer": optim, "scheduler": scheduler.state_dict(), "step": step,
                            "nonfinite_steps": nonfinite_steps, "rng": rng}, tensors)
    final, tmp, old = out_dir / CHECKPOINT, out_dir / ".checkpoint.tmp", out_dir / ".checkpoint.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(weights, tmp / "trainable.safetensors")
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps(state, allow_nan=False))
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _refuse_old_layout(ckpt: Path) -> None:
    if (ckpt / "optimizer.pt").exists() and not (ckpt / "state.json").exists():
        raise ConfigError(f"{ckpt}: checkpoint of the old layout (pickled optimizer.pt, which can run code when "
                         f"loaded); not loading it. Start the run afresh (without --resume) or remove {ckpt}")


def load_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer, scheduler) -> tuple[int, int]:
    """Restore trainable weights, optimizer, scheduler and RNG; return ``(steps done, non-finite steps skipped)``.

    Reads safetensors and JSON only: a checkpoint of the old layout (a pickled ``optimizer.pt``) is
    refused without being opened."""
    ckpt = out_dir / CHECKPOINT
    _refuse_old_layout(ckpt)
    weights = load_file(ckpt / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise RuntimeError(f"{ckpt}: checkpoint lacks trainable parameters {missing[:3]}... (different model or LoRA setup?)")
    state = _join_tensors(json.loads((ckpt / "state.json").read_text()), load_file(ckpt / "state.safetensors"),
                          ckpt / "state.json")
    shard = current_shard()
    if state["rng"]["torch"].shape[0] != shard.world:
        raise ConfigError(f"{ckpt}: written by {state['rng']['torch'].shape[0]} processes; resume with the same "
                         f"number (torchrun --nproc_per_node), not {shard.world}")
    if is_sharded(model):
        load_model_state(model, weights)
        load_optimizer_state(model, optimizer, state["optimizer"])
    else:
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"][shard.rank].clone())  # a row view would be read from its offset 0
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng"]["cuda"][shard.rank].clone())
    return int(state["step"]), int(state["nonfinite_steps"])


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_changes(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["loop.lr: 0.0002 -> 0.001", ...]``: every field whose value differs (or exists on one side only)."""
    a, b = _flat(json.loads(json.dumps(stored))), _flat(json.loads(json.dumps(new)))
    return [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in sorted(a.keys() | b.keys())
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


def check_resume_settings(out_dir: Path, settings: Mapping[str, Any], allow_changes: bool = False,
                          stored_name: str = SETTINGS) -> None:
    """Raise :class:`ResumeMismatch` when ``out_dir/stored_name`` records other settings than ``settings``."""
    path = out_dir / stored_name
    if not path.exists():
        if not allow_changes:
            raise ResumeMismatch(f"{path}: missing, so the settings of the run in {out_dir} are unknown (made by an "
                                 f"older version?); use a fresh --out, or --resume-with-changes")
        return
    changes = settings_changes(json.loads(path.read_text()), settings)
    if changes and not allow_changes:
        raise ResumeMismatch(f"{path}: --resume into a run made with other settings: {'; '.join(changes[:4])}"
                             f"{f' (+{len(changes) - 4} more)' if len(changes) > 4 else ''}; use the same "
                             f"settings, a fresh --out, or --resume-with-changes")


def _apply_new_schedule(optimizer, scheduler, cfg: LoopConfig) -> None:
    """After loading a checkpoint with changed settings: the new peak lr and weight decay, at the current step."""
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    for group, lr_lambda in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * lr_lambda(scheduler.last_epoch)
    optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def _json_row(row: Mapping[str, Any]) -> str:
    """A metrics row as strict JSON: non-finite numbers become null."""
    return json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()},
                      allow_nan=False)


def train_loop(model: torch.nn.Module, micro_step: MicroStep, cfg: LoopConfig, out_dir: str | os.PathLike, *,
               resume: bool = False, allow_changes: bool = False, settings: Mapping[str, Any] | None = None,
               desc: str = "train") -> list[dict]:
    """Run ``cfg.steps`` optimiser steps; returns the logged metric rows (also in ``metrics.jsonl``;
    under torchrun on rank 0, empty on the others).

    ``settings``: what else defines the run (objective, data, model), stored with the loop settings in
    ``OUT/settings.json`` and compared on resume.

    Under ``torchrun`` (:mod:`halluremedy.train.distributed`) every rank runs this with its shard of
    the data: gradients are averaged over ranks, metrics too, and rank 0 alone writes files."""
    out_dir = Path(out_dir)
    shard = current_shard()
    out_dir.mkdir(parents=True, exist_ok=True)
    step_fn, sync = wrap_micro_step(model, micro_step)  # FSDP2 shards the model in place: before the optimiser
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps)
    run_settings = {"loop": asdict(cfg), "world_size": shard.world, **(settings or {})}
    metrics_path = out_dir / "metrics.jsonl"
    start, skipped, last_good = 0, 0, None
    if resume and (out_dir / CHECKPOINT).exists():
        _refuse_old_layout(out_dir / CHECKPOINT)
        check_resume_settings(out_dir, run_settings, allow_changes)
        start, skipped = load_checkpoint(out_dir, model, optimizer, scheduler)
        last_good = start
        if allow_changes:
            _apply_new_schedule(optimizer, scheduler, cfg)
        if shard.is_main:
            _truncate_metrics(metrics_path, start)
    elif metrics_path.exists() and shard.is_main:
        metrics_path.unlink()
    if shard.is_main:
        (out_dir / SETTINGS).write_text(json.dumps(run_settings, indent=2))

    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    rows: list[dict] = []
    model.train()
    bar = tqdm(range(start, cfg.steps), desc=desc, initial=start, total=cfg.steps, leave=False,
               disable=not shard.is_main)
    for step in bar:
        sums: dict[str, float] = {}
        losses, batches = [], []
        for micro in range(cfg.grad_accum):
            with sync(micro == cfg.grad_accum - 1):
                with autocast:
                    loss, metrics = step_fn(step, micro)
                (loss / cfg.grad_accum).backward()
            losses.append(loss.detach().float())
            batches.append(metrics.get("batch", "?"))
            for k, v in metrics.items():  # 0-d tensors stay on the device (float64): read at log time only
                if k != "batch" and isinstance(v, (int, float, torch.Tensor)):
                    v = v.detach().to(torch.float64) if isinstance(v, torch.Tensor) else float(v)
                    sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        losses_t = all_reduce_sum(torch.stack(losses))
        if not bool(torch.isfinite(losses_t).all() & torch.isfinite(grad_norm)):  # one host sync per step
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            bad = [i for i, x in enumerate(losses_t.tolist()) if not math.isfinite(x)]
            what = (f"non-finite loss {losses_t[bad[0]].item()} at step {step} micro-batch {bad[0]} ({batches[bad[0]]})"
                    if bad else f"non-finite gradient norm {float(grad_norm)} at step {step} "
                                f"(micro-batches {', '.join(map(str, batches))})")
            if skipped > cfg.max_nonfinite_steps:
                kept = (f"last good checkpoint: step {last_good} in {out_dir / CHECKPOINT}" if last_good is not None
                        else f"no checkpoint was written in {out_dir}")
                bar.close()  # the error line starts on a clean line
                raise NonFiniteStep(f"{what}; the step was not applied; {kept} (a lower --lr usually helps)")
            tqdm.write(f"skipped step {step}: {what} ({skipped}/{cfg.max_nonfinite_steps} allowed)")
        else:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:  # every rank: the mean is a collective
            grad_norm, means = _read_metrics(grad_norm, sums)
        if shard.is_main and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            row = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, **means,
                   "nonfinite_steps": skipped}
            rows.append(row)
            with open(metrics_path, "a") as f:
                f.write(_json_row(row) + "\n")
            bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}")
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
            save_checkpoint(out_dir, model, optimizer, scheduler, step + 1, skipped)
            barrier()
            last_good = step + 1
    return rows


def _read_metrics(grad_norm: torch.Tensor, sums: Mapping[str, torch.Tensor | float]) -> tuple[float, dict[str, float]]:
    """The gradient norm and the step's metric means as Python floats, in ONE device read (the metrics
    averaged over ranks under torchrun: every rank calls this, at the same steps)."""
    values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=grad_norm.device) for v in sums.values()]
                         ) if sums else torch.zeros(0, dtype=torch.float64, device=grad_norm.device)
    values = all_reduce_mean(values)
    flat = torch.cat([grad_norm.detach().to(torch.float64).reshape(1), values]).tolist()
    return flat[0], dict(zip(sums, flat[1:]))


def _truncate_metrics(path: Path, done_steps: int) -> None:
    """Drop metric rows logged after the checkpoint (a run killed between save and log)."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(_json_row(r) + "\n" for r in rows if r["step"] <= done_steps))


def read_metrics(out_dir: str | os.PathLike) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(out_dir: str | os.PathLike, keys: list[str], png_name: str = "metrics.png") -> Path:
    """One PNG with a panel per metric key over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(out_dir)
    keys = [k for k in keys if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    path = Path(out_dir) / png_name
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
