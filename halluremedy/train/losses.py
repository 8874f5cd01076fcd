"""DPO-family preference losses on per-example sequence log-probabilities.

Inputs are ``PairLogps``: four (B,) float tensors, log pi(y | x) summed over the response tokens of
the chosen / rejected answer under the policy (with gradient) and the reference (without). With

    h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)          (B,)

the losses per example are

    sigmoid (DPO)        -log sigma(beta h)
        with label smoothing eps (cDPO, as TRL):  -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
    ipo                  (h - 1 / (2 beta))^2, on per-token *averaged* log-probs (as TRL's "ipo")
    hinge (SLiC)         relu(1 - beta h)

and the implicit rewards are ``beta * (policy - reference)`` per answer, detached. Every function
returns per-example values (``PreferenceLoss``); the training loop reduces them and logs ``metrics()``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossType", "PairLogps", "PovidStage2Loss", "PreferenceLoss", "dpo_objective", "hinge_loss", "ipo_loss",
           "nll_term", "povid_stage2_loss", "sigmoid_loss"]

LossType = Literal["sigmoid", "ipo", "hinge"]


class PairLogps(NamedTuple):
    """Summed response log-probs of a batch of preference pairs; each field (B,)."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    reference_chosen: Tensor
    reference_rejected: Tensor

    def margin(self) -> Tensor:
        """h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected), (B,)."""
        return (self.policy_chosen - self.policy_rejected) - (self.reference_chosen - self.reference_rejected)

    def per_token(self, chosen_lengths: Tensor, rejected_lengths: Tensor) -> PairLogps:
        """Each sum divided by its answer's response-token count (counts (B,), shared by policy and reference)."""
        c, r = chosen_lengths.to(self.policy_chosen.dtype), rejected_lengths.to(self.policy_rejected.dtype)
        return PairLogps(self.policy_chosen / c, self.policy_rejected / r, self.reference_chosen / c,
                         self.reference_rejected / r)


@dataclass(frozen=True)
class PreferenceLoss:
    """Per-example preference loss and implicit rewards; every tensor (B,)."""

    losses: Tensor
    chosen_rewards: Tensor  # beta * (policy_chosen - reference_chosen), detached
    rejected_rewards: Tensor  # beta * (policy_rejected - reference_rejected), detached
    nll: Tensor | None = None  # per-token NLL of the chosen answer, detached, when the RPO term is on

    @property
    def loss(self) -> Tensor:
        """Mean over the batch, a scalar to backpropagate."""
        return self.losses.mean()

    def metrics(self) -> dict[str, Tensor]:
        """Batch means as detached 0-d tensors (call ``.item()`` when logging, to sync once)."""
        margins = self.chosen_rewards - self.rejected_rewards
        out = {"loss": self.losses.detach().mean(),
               "rewards/accuracy": (margins > 0).float().mean(),
               "rewards/margin": margins.mean(),
               "rewards/chosen": self.chosen_rewards.mean(),
               "rewards/rejected": self.rejected_rewards.mean()}
        if self.nll is not None:
            out["nll"] = self.nll.mean()
        return out


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _result(losses: Tensor, logps: PairLogps, beta: float) -> PreferenceLoss:
    return PreferenceLoss(losses, beta * (logps.policy_chosen - logps.reference_chosen).detach(),
                          beta * (logps.policy_rejected - logps.reference_rejected).detach())


def sigmoid_loss(logps: PairLogps, beta: float, label_smoothing: float = 0.0) -> PreferenceLoss:
    """DPO: ``-log sigma(beta h)``; with ``label_smoothing`` eps in [0, 0.5] the cDPO mixture
    ``-(1 - eps) log sigma(beta h) - eps log sigma(-beta h)`` (preference labels flipped with probability eps)."""
    _check_beta(beta)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    z = beta * logps.margin()
    losses = -F.logsigmoid(z)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-z)
    return _result(losses, logps, beta)


def ipo_loss(logps: PairLogps, beta: float, chosen_lengths: Tensor | None = None,
             rejected_lengths: Tensor | None = None) -> PreferenceLoss:
    """IPO: ``(h - 1 / (2 beta))^2`` on per-token averaged log-probs.

    Give either averaged log-probs (``logps.per_token(...)`` already applied, lengths None) or summed
    log-probs with the (B,) response-token counts of both answers, which this function divides by.
    The rewards are then on the averaged scale too, as in TRL.
    """
    _check_beta(beta)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo_loss needs both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        logps = logps.per_token(chosen_lengths, rejected_lengths)
    return _result((logps.margin() - 1 / (2 * beta)) ** 2, logps, beta)


def hinge_loss(logps: PairLogps, beta: float) -> PreferenceLoss:
    """SLiC hinge: ``relu(1 - beta h)``."""
    _check_beta(beta)
    return _result(torch.relu(1 - beta * logps.margin()), logps, beta)


def nll_term(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Tensor:
    """Per-example mean token NLL of the chosen answer, ``-policy_chosen_logps / chosen_lengths``, (B,).

    ``policy_chosen_logps`` are summed log-probs (B,), ``chosen_lengths`` their token counts (B,).
    (TRL's RPO term averages over all chosen tokens of the batch instead; equal when lengths are equal.)
    """
    return -policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype)


def dpo_objective(logps: PairLogps, *, loss_type: LossType = "sigmoid", beta: float = 0.1,
                  label_smoothing: float = 0.0, alpha: float = 0.0, chosen_lengths: Tensor | None = None,
                  rejected_lengths: Tensor | None = None) -> PreferenceLoss:
    """One preference loss plus the RPO term: ``losses = pref + alpha * nll_term(...)``, (B,).

    ``logps`` are summed log-probs. ``chosen_lengths`` / ``rejected_lengths`` (B,) are response-token
    counts: "ipo" needs both (it averages), ``alpha > 0`` needs ``chosen_lengths``. ``alpha = 0``
    disables the NLL term. ``label_smoothing`` applies to "sigmoid" only.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {loss_type!r}")
    if loss_type == "sigmoid":
        out = sigmoid_loss(logps, beta, label_smoothing)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("the ipo loss needs chosen_lengths and rejected_lengths (it averages per token)")
        out = ipo_loss(logps, beta, chosen_lengths, rejected_lengths)
    elif loss_type == "hinge":
        out = hinge_loss(logps, beta)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected 'sigmoid', 'ipo' or 'hinge'")
    if alpha == 0:
        return out
    if chosen_lengths is None:
        raise ValueError("alpha > 0 (RPO NLL term) needs chosen_lengths")
    nll = nll_term(logps.policy_chosen, chosen_lengths)
    return replace(out, losses=out.losses + alpha * nll, nll=nll.detach())


@dataclass(frozen=True)
class PovidStage2Loss:
    """POVID stage 2: the weighted sum (B,) and both sigmoid-DPO parts (``noise`` None: no noise term)."""

    losses: Tensor  # weight_text * text.losses + weight_noise * noise.losses
    text: PreferenceLoss
    noise: PreferenceLoss | None

    @property
    def loss(self) -> Tensor:
        return self.losses.mean()

    def metrics(self) -> dict[str, Tensor]:
        """``loss`` of the sum, then each part's metrics under ``text/`` and ``noise/``."""
        out = {"loss": self.losses.detach().mean()}
        for name, part in (("text", self.text), ("noise", self.noise)):
            if part is not None:
                out.update({f"{name}/{k}": v for k, v in part.metrics().items()})
        return out


def povid_stage2_loss(text: PairLogps, noise: PairLogps | None, *, beta: float = 0.1, weight_text: float = 0.5,
                      weight_noise: float = 0.5) -> PovidStage2Loss:
    """POVID stage 2: ``weight_text * L_text + weight_noise * L_noise``, two sigmoid DPO losses, one beta.

    Every tensor (B,), summed over the response tokens t of the ground-truth answer y+ (teacher-forced):

    * ``text``: the ordinary pair, log pi(y+ | clean image) vs. log pi(y- | clean image), y- the
      hallucinated rewrite, for the policy and the reference.
    * ``noise``: the chosen fields are the same clean-image log-probs of y+ as in ``text``. The
      rejected fields are ``sum_t log pi(a_t | clean image, y+_<t)`` where
      ``a_t = argmax_v pi(v | noised image, y+_<t)`` (the argmax carries no gradient; the clean-image
      log-prob of a_t does, for the policy). The reference computes the same with its *own* argmax
      under the same noised image. Where a_t equals the ground-truth token y+_t, the position adds
      the same log-prob to the chosen and the rejected sum of that model, so it cancels in h: only
      positions where the noised image changes the model's prediction train the noise term.
    * ``noise`` None (the text-only ablation, ``weight_noise`` 0): ``weight_text * L_text`` alone.
    """
    text_loss = sigmoid_loss(text, beta)
    if noise is None:
        if weight_noise:
            raise ValueError(f"povid_stage2_loss: weight_noise={weight_noise} needs the noise pair")
        return PovidStage2Loss(weight_text * text_loss.losses, text_loss, None)
    noise_loss = sigmoid_loss(noise, beta)
    return PovidStage2Loss(weight_text * text_loss.losses + weight_noise * noise_loss.losses, text_loss, noise_loss)
