"""POVID's stage-2 step, transcribed from the structure of YiyangZhou/POVID's ``concatenated_multi_forward``.

Per model (policy with grad, then the reference = adapters disabled, without), three separate
full forwards of the LLaVA model over a (B, T) right-padded batch, each with the image through
the vision tower and full ``(B, T, V)`` logits cast to fp32:

1. ``[P | y+]`` with the clean image -> summed log-probs of y+ (``log_softmax`` + gather);
2. ``[P | y+]`` with the noised image -> its per-position argmax tokens a_t (run with grad enabled
   for the policy, as POVID does: its graph is built and kept until backward, though no gradient
   can flow through an argmax);
3. ``[P | y-]`` with the clean image -> summed log-probs of y-.

The noise term's "rejected" score is ``sum_t log_softmax(logits_1)[t, a_t]`` over y+'s positions
(a second ``log_softmax`` of the clean chosen logits, as in the original). The loss is
``0.5 * DPO(y+ vs a) + 0.5 * DPO(y+ vs y-)``, sigmoid, beta 0.1, mean over the batch; the
chosen/rejected logits stay alive until the end of the step (POVID returns them for its metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from halluremedy.train.dpo import EncodedRecord

from .trl_style import IGNORE, dpo_sigmoid
from .workload import Workload


@dataclass
class PaddedBatch:
    """(B, T) ``[prompt | answer | pad]`` with labels on the answer tokens only."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def padded(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_token_id: int) -> PaddedBatch:
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros(len(prompts), width, dtype=torch.long)
    labels = torch.full((len(prompts), width), IGNORE, dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, :len(p) + len(a)] = torch.tensor(list(p) + list(a))
        attention[i, :len(p) + len(a)] = 1
        labels[i, len(p):len(p) + len(a)] = torch.tensor(list(a))
    return PaddedBatch(ids, attention, labels)


def _batch_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    labels = labels[:, 1:].clone()
    mask = labels != IGNORE
    labels[~mask] = 0
    logp = torch.gather(logits[:, :-1].log_softmax(-1), 2, labels[..., None]).squeeze(2)
    return (logp * mask).sum(-1)


def _noise_logps(noised_logits: torch.Tensor, chosen_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask = labels[:, 1:] != IGNORE
    argmax = noised_logits[:, :-1].max(dim=2).indices
    logp = torch.gather(chosen_logits[:, :-1].log_softmax(-1), 2, argmax[..., None]).squeeze(2)
    return (logp * mask).sum(-1)


def multi_forward(model: torch.nn.Module, chosen: PaddedBatch, rejected: PaddedBatch, clean: torch.Tensor,
                  noised: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(chosen logps, rejected logps, noise logps, chosen logits, rejected logits)."""
    def logits(batch: PaddedBatch, pixels: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=pixels,
                     use_cache=False).logits.float()

    chosen_logits = logits(chosen, clean)
    chosen_logps = _batch_logps(chosen_logits, chosen.labels)
    noised_logits = logits(chosen, noised)
    rejected_logits = logits(rejected, clean)
    rejected_logps = _batch_logps(rejected_logits, rejected.labels)
    noise_logps = _noise_logps(noised_logits, chosen_logits, chosen.labels)
    return chosen_logps, rejected_logps, noise_logps, chosen_logits, rejected_logits


def povid_loss(policy: torch.nn.Module, records: Sequence[EncodedRecord], clean: torch.Tensor, noised: torch.Tensor,
               pad_token_id: int) -> torch.Tensor:
    chosen = padded([r.prompt for r in records], [r.chosen for r in records], pad_token_id)
    rejected = padded([r.prompt for r in records], [r.rejected[0] for r in records], pad_token_id)
    pc, pr, pn, chosen_logits, rejected_logits = multi_forward(policy, chosen, rejected, clean, noised)
    with torch.no_grad(), policy.disable_adapter():
        rc, rr, rn, _, _ = multi_forward(policy, chosen, rejected, clean, noised)
    losses = 0.5 * dpo_sigmoid(pc, pn, rc, rn) + 0.5 * dpo_sigmoid(pc, pr, rc, rr)
    # POVID's metrics read the policy's logits, so they live until here.
    _ = (chosen_logits.detach().mean(), rejected_logits.detach().mean())
    return losses.mean()


def make_povid(workload: Workload) -> Callable[[], torch.Tensor]:
    policy = workload.fresh_policy().train()

    def step() -> torch.Tensor:
        policy.zero_grad(set_to_none=True)
        loss = povid_loss(policy, workload.records, workload.clean, workload.noised, workload.pad_token_id)
        loss.backward()
        return loss.detach()

    step.model = policy
    return step
