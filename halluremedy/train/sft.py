"""Supervised fine-tuning on conversations (captions, QA, reflective rationales): loss on assistant tokens.

``SupervisedBatches`` pre-encodes every conversation once and serves batch ``i`` as a pure function
of ``(seed, i)`` (a fresh permutation per epoch), which is what makes resumed runs exact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from vlm_kernels import diffusion_noise

from halluremedy.data.conversation import IGNORE_INDEX, Conversation, ConversationEncoder, pad_right
from halluremedy.data.images import ImageBank
from halluremedy.train.distributed import Shard, current_shard, global_token_scale
from halluremedy.train.loop import LoopConfig, train_loop


class EpochSampler:
    """Index ``i`` of an endless stream of epochs, each a seeded permutation of ``range(n)``.

    Micro-batch ``index`` of ``batch_size`` records per rank (:meth:`batch_rows`) is the ``shard.rank``-th
    slice of global micro-batch ``index`` (``batch_size * shard.world`` records), so the ranks of a
    data-parallel run together see what one process with ``world`` times the micro-batch sees."""

    def __init__(self, n: int, seed: int, shard: Shard | None = None):
        if n == 0:
            raise ValueError("no training records")
        self.n, self.seed = n, seed
        self.shard = shard or current_shard()
        self._cache: dict[int, np.ndarray] = {}

    def batch_rows(self, index: int, batch_size: int) -> list[int]:
        """This rank's records of micro-batch ``index``."""
        return self.take((index * self.shard.world + self.shard.rank) * batch_size, batch_size)

    def epoch_of(self, index: int, batch_size: int) -> int:
        """The epoch global micro-batch ``index`` starts in."""
        return index * batch_size * self.shard.world // self.n

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for i in range(start, start + count):
            epoch, k = divmod(i, self.n)
            if epoch not in self._cache:
                self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
            out.append(int(self._cache[epoch][k]))
        return out


@dataclass(frozen=True)
class NoiseAugment:
    """Noise a ``share`` of the images of each batch to a forward-diffusion step drawn uniformly
    from ``[0, max_step)`` (POVID's schedule, ``vlm_kernels.diffusion_noise``), the text unchanged.

    A model trained so sees through moderate noise and, where the noise hides an object, falls back
    on what the text makes likely, as CLIP-based VLMs do; without it a tiny encoder reads noise as
    a texture of its own (the scene base named noised images "ring"). Batch ``i``'s draw is a pure
    function of ``(seed, i)``.
    """

    share: float
    max_step: int = 700
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0 or self.max_step < 1:
            raise ValueError(f"NoiseAugment needs share in [0, 1] and max_step >= 1, got {self}")

    def apply(self, images01: torch.Tensor, index: int, bank: ImageBank) -> torch.Tensor:
        """(B, C, H, W) pixels of batch ``index``'s [0, 1] images, normalised as ``bank`` does, a
        ``share`` of them noised."""
        rng = np.random.default_rng([self.seed, index])
        noised = torch.from_numpy(rng.random(len(images01)) < self.share).to(images01.device)
        steps = torch.from_numpy(rng.integers(0, self.max_step, len(images01))).to(images01.device)
        out = diffusion_noise(images01, steps, seed=int(rng.integers(2**31)), mean=bank.mean.flatten().tolist(),
                              std=bank.std.flatten().tolist())
        return torch.where(noised[:, None, None, None], out, bank.normalize(images01))


class SupervisedBatches:
    """Batches of encoded conversations with their images.

    ``batch(i)`` -> dict with ``input_ids`` (B, T), ``labels`` (B, T) (``-100`` outside assistant
    turns and padding), ``attention_mask`` (B, T), ``pixel_values`` (B, C, H, W) (noised as
    ``noise`` says, if given), and with ``weights`` (one per conversation) ``token_weights`` (B, T):
    each token's weight in the loss, its conversation's weight (0 where ``labels`` is ``-100``).
    """

    def __init__(self, conversations: Sequence[Conversation], encoder: ConversationEncoder, bank: ImageBank,
                 batch_size: int, seed: int, noise: NoiseAugment | None = None,
                 weights: Sequence[float] | None = None):
        missing = [c.image for c in conversations if c.image not in bank]
        if missing:
            raise FileNotFoundError(f"{len(missing)} conversations name images not in the dataset, e.g. {missing[0]}")
        self.encoded = [encoder.encode(c.turns, where=f"record {k} ({c.id or c.image})")
                        for k, c in enumerate(conversations)]
        self.images = [c.image for c in conversations]
        self.bank, self.batch_size = bank, batch_size
        self.pad_id = encoder.tokenizer.pad_token_id
        self.sampler = EpochSampler(len(conversations), seed)
        self.noise = noise
        if weights is not None and (len(weights) != len(conversations) or min(weights, default=1.0) < 0):
            raise ValueError(f"SupervisedBatches: weights needs one value >= 0 per conversation "
                             f"({len(conversations)}), got {len(weights)}")
        self.weights = None if weights is None else [float(w) for w in weights]

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        rows = self.sampler.batch_rows(index, self.batch_size)
        ids = pad_right([self.encoded[r][0] for r in rows], self.pad_id)
        labels = pad_right([self.encoded[r][1] for r in rows], IGNORE_INDEX)
        mask = pad_right([[1] * len(self.encoded[r][0]) for r in rows], 0)
        files = [self.images[r] for r in rows]
        pixels = self.bank.pixels(files) if self.noise is None else \
            self.noise.apply(self.bank.get01(files), index, self.bank)
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels}
        if self.weights is not None:
            w = torch.tensor([self.weights[r] for r in rows], dtype=torch.float32)[:, None]
            out["token_weights"] = (labels != IGNORE_INDEX).float() * w
        return out


def weighted_token_loss(logits: torch.Tensor, labels: torch.Tensor, token_weights: torch.Tensor) -> torch.Tensor:
    """sum_t w_t * nll_t / sum_t w_t over next-token predictions: ``logits`` (B, T, V) at position t
    scores token t + 1 of ``labels`` (B, T) (``-100``: not scored), weighted by ``token_weights`` (B, T)
    of that token. With every weight 1 this is the mean over assistant tokens (the models' own loss)."""
    target = labels[:, 1:]
    w = token_weights[:, 1:] * (target != IGNORE_INDEX)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.clamp_min(0).flatten(),
                                            reduction="none").view_as(w)
    return (nll * w).sum() / w.sum().clamp_min(torch.finfo(torch.float32).tiny)


def train_sft(model: torch.nn.Module, batches: SupervisedBatches, cfg: LoopConfig, out_dir: str | os.PathLike,
              *, resume: bool = False, allow_changes: bool = False, settings: Mapping[str, Any] | None = None
              ) -> list[dict]:
    """Next-token loss on assistant tokens (their mean, or :func:`weighted_token_loss` where the batches
    carry weights), through the shared loop (``settings``, ``allow_changes``: see
    :func:`~halluremedy.train.loop.train_loop`)."""
    device = next(model.parameters()).device

    def micro_step(step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        index = step * cfg.grad_accum + micro
        b = {k: v.to(device) for k, v in batches.batch(index).items()}
        b["pixel_values"] = b["pixel_values"].to(model.dtype)
        weights = b.pop("token_weights", None)
        if weights is None:
            loss = model(**b).loss  # mean over this micro-batch's assistant tokens
            scored = (b["labels"][:, 1:] != IGNORE_INDEX).sum()
        else:
            labels = b.pop("labels")
            loss = weighted_token_loss(model(**b).logits, labels, weights)
            scored = weights[:, 1:].sum()
        if batches.sampler.shard.world > 1:  # the mean over every rank's tokens, once DDP averages
            loss = loss * global_token_scale(scored)
        return loss, {"loss": loss.detach(), "batch": index}  # read by the loop once per log interval

    return train_loop(model, micro_step, cfg, out_dir, resume=resume, allow_changes=allow_changes,
                      settings=settings, desc="sft")
