"""Supervised fine-tuning on conversations (captions, QA, reflective rationales): loss on assistant tokens.

``SupervisedBatches`` pre-encodes every conversation once and serves batch ``i`` as a pure function
of ``(seed, i)`` (a fresh permutation per epoch), which is what makes resumed runs exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from halluremedy.data.conversation import IGNORE_INDEX, Conversation, ConversationEncoder, pad_right
from halluremedy.data.images import ImageBank
from halluremedy.train.loop import LoopConfig, train_loop


class EpochSampler:
    """Index ``i`` of an endless stream of epochs, each a seeded permutation of ``range(n)``."""

    def __init__(self, n: int, seed: int):
        if n == 0:
            raise ValueError("no training records")
        self.n, self.seed = n, seed
        self._cache: dict[int, np.ndarray] = {}

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for i in range(start, start + count):
            epoch, k = divmod(i, self.n)
            if epoch not in self._cache:
                self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
            out.append(int(self._cache[epoch][k]))
        return out


class SupervisedBatches:
    """Batches of encoded conversations with their images.

    ``batch(i)`` -> dict with ``input_ids`` (B, T), ``labels`` (B, T) (``-100`` outside assistant
    turns and padding), ``attention_mask`` (B, T), ``pixel_values`` (B, C, H, W).
    """

    def __init__(self, conversations: Sequence[Conversation], encoder: ConversationEncoder, bank: ImageBank,
                 batch_size: int, seed: int):
        missing = [c.image for c in conversations if c.image not in bank]
        if missing:
            raise FileNotFoundError(f"{len(missing)} conversations name images not in the dataset, e.g. {missing[0]}")
        self.encoded = [encoder.encode(c.turns, where=f"record {k} ({c.id or c.image})")
                        for k, c in enumerate(conversations)]
        self.images = [c.image for c in conversations]
        self.bank, self.batch_size = bank, batch_size
        self.pad_id = encoder.tokenizer.pad_token_id
        self.sampler = EpochSampler(len(conversations), seed)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rows = self.sampler.take(index * self.batch_size, self.batch_size)
        ids = pad_right([self.encoded[r][0] for r in rows], self.pad_id)
        labels = pad_right([self.encoded[r][1] for r in rows], IGNORE_INDEX)
        mask = pad_right([[1] * len(self.encoded[r][0]) for r in rows], 0)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "pixel_values": self.bank.pixels([self.images[r] for r in rows])}


def train_sft(model: torch.nn.Module, batches: SupervisedBatches, cfg: LoopConfig, out_dir: str | os.PathLike,
              *, resume: bool = False) -> list[dict]:
    """Next-token loss on assistant tokens (mean over them), through the shared loop."""
    device = next(model.parameters()).device

    def micro_step(step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        index = step * cfg.grad_accum + micro
        b = {k: v.to(device) for k, v in batches.batch(index).items()}
        b["pixel_values"] = b["pixel_values"].to(model.dtype)
        loss = model(**b).loss
        return loss, {"loss": loss.item(), "batch": index}

    return train_loop(model, micro_step, cfg, out_dir, resume=resume, desc="sft")
