"""halluremedy's own step, exactly as ``halluremedy.train.dpo.train_preference``'s micro-step runs it.

Stage 1: one no-grad packed forward of the reference (adapters disabled) and one packed forward
of the policy with grad, each ``[P | y+ | y-]`` per record, log-probs of the response rows only
(``vlm_kernels.linear_logprob``). Stage 2 adds one no-grad packed ``[P | y+]`` forward per model
under the noised image for the argmax tokens. The frozen tower runs once per image per step (clean,
and noised in stage 2), up to its feature layer; every forward reuses those features
(``dpo.preference_step``). Data loading (image read, noise draw) is outside the step for every provider.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from halluremedy.train.dpo import PreferenceBatch, PreferenceObjective, Reference, preference_step

from .workload import BETA, NOISE_STEP, Workload


def ours_loss(policy: torch.nn.Module, batch: PreferenceBatch, clean: torch.Tensor, noised: torch.Tensor | None,
              stage: int) -> torch.Tensor:
    """The mean preference loss of one micro-batch (before backward), ``train_preference``'s order."""
    objective = PreferenceObjective(stage=stage, beta=BETA, noise_step=NOISE_STEP)
    loss, _ = preference_step(policy, Reference("adapter"), objective, batch, clean, noised if stage == 2 else None)
    return loss


def make_ours(workload: Workload, stage: int) -> Callable[[], torch.Tensor]:
    policy = workload.fresh_policy().train()

    def step() -> torch.Tensor:
        policy.zero_grad(set_to_none=True)
        loss = ours_loss(policy, workload.batch, workload.clean, workload.noised, stage)
        loss.backward()
        return loss.detach()

    step.model = policy
    return step
