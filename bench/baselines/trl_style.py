"""TRL-style DPO steps, transcribed: the layout TRL's DPOTrainer feeds a VLM, two LM-head variants.

Layout (``DataCollatorForVisionPreference`` of TRL 1.x after tokenisation): the B prompts repeated
twice, chosen completions then rejected completions, one ``(2B, T)`` batch; left padding flushed,
so row i is ``[prompt_i | completion_i | pad]``; ``pixel_values`` repeated for the chosen and the
rejected rows, so the vision tower runs 2B times per forward, for the policy and again for the
reference (TRL refuses to precompute reference log-probs for vision data).

Heads:

* ``"full"``: the model's own forward, full ``(2B, T, V)`` logits, ``log_softmax`` + gather over the
  completion positions (TRL up to 0.2x, the anchor in shared/REFERENCE.md).
* ``"liger"``: the decoder's last hidden states go to Liger's ``LigerFusedLinearDPOLoss`` with the
  reference's hidden states (how TRL's ``use_liger_loss`` ran DPO): chunks of one pair, logits of
  every position of the pair, gradients computed during the forward with ``torch.func``.
  ``compiled=False``: ``torch.compile`` needs a C++ toolchain and costs more than it saves at these
  sizes on a CPU. (TRL 1.16's own ``use_liger_kernel`` only swaps in Liger's Triton layer kernels,
  which need a GPU; its DPO LM head is its own chunked log-prob head, see ``trl_trainer``.)

Loss: sigmoid DPO, beta 0.1, summed completion log-probs, mean over pairs (TRL's default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from halluremedy.train.dpo import EncodedRecord

from .workload import BETA, Workload

IGNORE = -100


@dataclass
class TrlBatch:
    """input_ids, attention_mask, completion_mask: (2B, T), chosen rows first; pixel_values (2B, C, H, W)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    pixel_values: torch.Tensor

    def labels(self) -> torch.Tensor:
        return self.input_ids.masked_fill(self.completion_mask == 0, IGNORE)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """What TRL's collator returns (``DPOTrainer.compute_loss`` input)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "completion_mask": self.completion_mask, "pixel_values": self.pixel_values}


def trl_layout(records: Sequence[EncodedRecord], pixel_values: torch.Tensor, pad_token_id: int) -> TrlBatch:
    """The (2B, T) batch of TRL's VLM collator for records with one rejected answer each."""
    prompts = [r.prompt for r in records] * 2
    completions = [r.chosen for r in records] + [r.rejected[0] for r in records]
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros(len(prompts), width, dtype=torch.long)
    completion = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        attention[i, :len(p) + len(c)] = 1
        completion[i, len(p):len(p) + len(c)] = 1
    return TrlBatch(ids, attention, completion, pixel_values.repeat(2, 1, 1, 1))


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(2B,) summed log-probs of the labelled positions: full log_softmax, then gather (TRL <= 0.2x)."""
    labels = labels[:, 1:]
    mask = labels != IGNORE
    logp = logits[:, :-1].float().log_softmax(-1).gather(2, labels.clamp(min=0)[..., None]).squeeze(2)
    return (logp * mask).sum(-1)


def dpo_sigmoid(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
                ) -> torch.Tensor:
    return -F.logsigmoid(BETA * ((chosen - ref_chosen) - (rejected - ref_rejected)))


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The ``LlavaModel`` (vision tower + projector + decoder, no LM head) inside a PeftModel."""
    return model.get_base_model().model


def trl_style_loss(policy: torch.nn.Module, batch: TrlBatch, head: str) -> torch.Tensor:
    labels = batch.labels()
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "pixel_values": batch.pixel_values, "use_cache": False}
    if head == "full":
        logps = sequence_logps(policy(**kwargs).logits, labels)
        with torch.no_grad(), policy.disable_adapter():
            ref_logps = sequence_logps(policy(**kwargs).logits, labels)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        return dpo_sigmoid(chosen, rejected, ref_chosen, ref_rejected).mean()
    if head == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        head_weight = policy.get_base_model().lm_head.weight
        hidden = _decoder(policy)(**kwargs).last_hidden_state
        with torch.no_grad(), policy.disable_adapter():
            ref_hidden = _decoder(policy)(**kwargs).last_hidden_state
        loss_fn = LigerFusedLinearDPOLoss(ignore_index=IGNORE, beta=BETA, compiled=False, use_ref_model=True,
                                          average_log_prob=False)
        return loss_fn(head_weight, hidden[:, :-1], labels[:, 1:], ref_input=ref_hidden[:, :-1],
                       ref_weight=head_weight)[0]
    raise ValueError(f"head must be 'full' or 'liger', got {head!r}")


def make_trl_style(workload: Workload, head: str) -> Callable[[], torch.Tensor]:
    policy = workload.fresh_policy().train()
    batch = trl_layout(workload.records, workload.clean, workload.pad_token_id)

    def step() -> torch.Tensor:
        policy.zero_grad(set_to_none=True)
        loss = trl_style_loss(policy, batch, head)
        loss.backward()
        return loss.detach()

    step.model = policy
    return step
