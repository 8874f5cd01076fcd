"""POVID's stage 2 (arXiv 2402.11411): the rejected answer of its noise term, assembled in one place.

L_noise is a sigmoid DPO loss whose "chosen" score is the ground truth y+ and whose "rejected"
score, per y+ position t (teacher-forced on y+), is the token the model would say there with the
image noised, scored under the clean image:

    a_t = argmax_v pi(v | noised image, y+_<t)       (no gradient)
    rejected = sum_t log pi(a_t | clean image, y+_<t)

Each model (policy and reference) takes its own argmax. A step assembles it in three parts, each a
function here, called by :func:`halluremedy.train.dpo.model_logps`:

1. the noised images (:func:`noised_images`): forward diffusion x_k = sqrt(abar_k) x0 +
   sqrt(1 - abar_k) eps on the [0, 1] image (``vlm_kernels.diffusion_noise``, k = ``noise_step``),
   fused with the CLIP normalisation; image b's eps is a pure function of (seed, epoch, record), so
   it is fresh every epoch and does not depend on which records share its batch;
2. the argmax (:func:`noise_argmax`): one no-grad packed ``[P | y+]`` forward on the noised images,
   ``vlm_kernels.linear_argmax`` on the y+ rows (no (N, V) logits);
3. the position rules (:func:`noise_column`): ``noise_positions`` may keep a_t at only some y+
   positions; elsewhere a_t := y+_t, so the position cancels between chosen and rejected. "seen":
   the clean-image argmax is the y+ token; "novel": a_t occurs nowhere in y+; "present": a_t is no
   token of a word naming a class present in the image. Rules combine, all must hold.

The column then rides as a second target of the scoring forward's ``linear_logprob`` call, so the
rejected score costs no forward of its own.

Shapes: B records per micro-batch; N rows of the scored pack ``[P | y+ | y-_1 .. y-_k]`` that
predict a response token; N_chosen of them predict a y+ token; V the vocabulary.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import torch
from vlm_kernels import diffusion_noise

from halluremedy.data.images import ImageBank
from halluremedy.models.packed import PackedBatch, StepImages, llava_parts, response_rows, rows_argmax

NOISE_POSITION_RULES = ("seen", "novel", "present")


def noise_seed(seed: int, epoch: int, record: int) -> int:
    """The noise seed of dataset record ``record`` in ``epoch`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, record]).generate_state(1)[0])


def noised_pixels(bank: ImageBank, images01: torch.Tensor, keys: Sequence[int], step: int) -> torch.Tensor:
    """(B, C, H, W) normalised noised images from (B, C, H, W) [0, 1] ``images01``; image b's noise is
    a pure function of ``keys[b]``, fused with the CLIP normalisation."""
    mean, std = channel_stats(bank)
    return torch.cat([diffusion_noise(images01[b:b + 1], step, seed=int(keys[b]), mean=mean, std=std)
                      for b in range(images01.shape[0])])


def noised_images(bank: ImageBank, images01: torch.Tensor, records: Sequence[int], *, seed: int, epoch: int,
                  step: int) -> torch.Tensor:
    """(B, C, H, W) normalised noised images of dataset records ``records`` (B,) in ``epoch``: what the
    training step and the reference precompute both see."""
    return noised_pixels(bank, images01, [noise_seed(seed, epoch, r) for r in records], step)


_STATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def channel_stats(bank: ImageBank) -> tuple[list[float], list[float]]:
    """The bank's CLIP mean and std as Python lists, read off its (CPU) tensors once per bank."""
    if bank not in _STATS:
        _STATS[bank] = (bank.mean.flatten().tolist(), bank.std.flatten().tolist())
    return _STATS[bank]


@torch.no_grad()
def noise_argmax(model: torch.nn.Module, chosen_only: PackedBatch, noised: torch.Tensor | StepImages) -> torch.Tensor:
    """(N_chosen,) long: a_t, the argmax token at every y+ position under the (B, C, H, W) noised
    images, teacher-forced on y+; ``chosen_only`` is the pack of ``[P_b | y+_b]``."""
    packed = chosen_only.to(noised.device)
    return rows_argmax(model, response_rows(model, packed, noised))


def noise_column(model: torch.nn.Module, scored: PackedBatch, chosen_rows: torch.Tensor, rows: torch.Tensor,
                 argmax_tokens: torch.Tensor, present: torch.Tensor, rules: frozenset[str]) -> torch.Tensor:
    """(N,) long, the second target column of the scoring forward: a_t at the y+ rows where every rule
    holds, y+_t at the other y+ rows (so they cancel), -1 (not scored) off y+.

    scored: the pack of ``[P_b | y+_b | y-_b1 ..]``; chosen_rows: (N_chosen,) long, its y+ rows (in
    ``[P_b | y+_b]`` order); rows: (N, D) the scoring forward's response rows (rule "seen" reads the
    clean-image argmax off them, detached: no extra forward); argmax_tokens: (N_chosen,) long, a_t;
    present: (M, 2) long, (y+ response, token) of every token of a word naming a class present in that
    record's image (rule "present"). Index tensors only, no host sync."""
    column = torch.full_like(scored.targets, -1)                                  # (N,)
    truth = scored.targets.index_select(0, chosen_rows)                           # (N_chosen,)
    argmax_tokens = argmax_tokens.to(column.device)
    keep = torch.ones_like(truth, dtype=torch.bool)
    if "seen" in rules:
        keep &= rows_argmax(model, rows.index_select(0, chosen_rows).detach()) == truth
    response = scored.token_response.index_select(0, chosen_rows)                 # (N_chosen,)
    vocab = llava_parts(model)[1].weight.shape[0]
    if "novel" in rules:
        keep &= ~occurs_in_response(argmax_tokens, response, truth, response, width=vocab)
    if "present" in rules:
        table = present.to(truth.device)
        keep &= ~occurs_in_response(argmax_tokens, response, table[:, 1], table[:, 0], width=vocab)
    return column.index_copy(0, chosen_rows, torch.where(keep, argmax_tokens, truth))


def occurs_in_response(tokens: torch.Tensor, response: torch.Tensor, table_tokens: torch.Tensor,
                       table_response: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """(N,) bool: ``tokens[i]`` is listed for its own response ``response[i]`` in the table of
    (M,) ``table_tokens`` / ``table_response`` pairs. ``width``: a bound on every token id (the
    vocabulary size); None reads the largest one off the tensors (a host sync on a GPU)."""
    if table_tokens.numel() == 0:
        return torch.zeros_like(tokens, dtype=torch.bool)
    if width is None:
        width = int(torch.maximum(tokens.max(), table_tokens.max())) + 1
    return torch.isin(response * width + tokens, table_response * width + table_tokens)
