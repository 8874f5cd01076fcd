"""The steps the benchmark compares, each building its own policy copy from one :class:`Workload`.

``PROVIDERS[name].make(workload)`` returns ``step()``: zero the grads, one forward + backward of that
provider's preference loss on the workload's batch, return the (detached) loss. Stage-1 providers
compute sigmoid DPO on the same pairs; stage-2 providers POVID's ``0.5 L_text + 0.5 L_noise``.
``peer`` names the provider ``ours`` is compared with in the ratio table.

Import as ``baselines`` with ``bench/`` on ``sys.path`` (pytest's rootdir-relative import of
``bench/bench_step.py`` and ``python bench/compare.py`` both put it there).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ours import make_ours
from .povid_style import make_povid
from .trl_style import make_trl_style
from .trl_trainer import make_trl_trainer
from .workload import CONFIGS, BenchConfig, Workload, build_workload


@dataclass(frozen=True)
class Provider:
    name: str
    stage: int
    description: str
    make: Callable[[Workload], Callable[[], torch.Tensor]]
    ours: str  # the halluremedy provider of the same stage, compared against this one
    needs_trl: bool = False  # runs TRL itself (pip install -e ".[bench]")
    cuda_only: bool = False  # Triton kernels that need a GPU (Triton finds no driver on a CPU)
    flops_as: str | None = None  # the bench/flops.py step that does the same matmuls, if named otherwise

    @property
    def installed(self) -> bool:
        """False when the provider runs TRL and TRL (a benchmark-only dependency) is not installed."""
        return not self.needs_trl or importlib.util.find_spec("trl") is not None


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("ours-s1", 1, "halluremedy stage 1: packed prefix-shared, fused response log-probs",
             lambda w: make_ours(w, 1), "ours-s1"),
    Provider("trl", 1, "TRL 1.16 DPOTrainer.training_step (fused chunked log-prob head)", make_trl_trainer,
             "ours-s1", needs_trl=True),
    Provider("trl-liger", 1, "TRL-style 2B batch + Liger LigerFusedLinearDPOLoss (compiled=False)",
             lambda w: make_trl_style(w, "liger"), "ours-s1"),
    Provider("trl-full", 1, "TRL-style 2B batch, full (2B, T, V) logits (TRL <= 0.2x)",
             lambda w: make_trl_style(w, "full"), "ours-s1"),
    Provider("trl-liger-kernels", 1, "TRL 1.16 DPOTrainer with use_liger_kernel=True (Liger RMSNorm/SwiGLU/RoPE)",
             lambda w: make_trl_trainer(w, liger_kernels=True), "ours-s1", needs_trl=True, cuda_only=True, flops_as="trl"),
    Provider("ours-s2", 2, "halluremedy POVID stage 2: 1 grad + 3 no-grad packed forwards",
             lambda w: make_ours(w, 2), "ours-s2"),
    Provider("povid", 2, "POVID-style stage 2: 3 + 3 full forwards, full logits", make_povid, "ours-s2"),
)}

__all__ = ["CONFIGS", "PROVIDERS", "BenchConfig", "Provider", "Workload", "build_workload"]
