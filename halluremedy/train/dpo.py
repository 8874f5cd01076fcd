"""Preference optimisation (DPO, POVID stages 1 and 2) on the packed, prefix-shared forward.

Per micro-batch of B records (prompt + image, chosen y+, k rejected y-):

* the images are read once as [0, 1] tensors; the clean batch is their CLIP normalisation;
* stage 2 only: each image is noised, then one no-grad packed forward of ``[P | y+]`` per model
  gives the argmax tokens a_t under the noised image, kept at the positions ``noise_positions``
  allows (:mod:`halluremedy.train.povid`: the noise, the argmax and the position rules);
* one packed forward ``[P | y+ | y-_1 .. y-_k]`` for the policy (with grad) and one for the
  reference (no grad) score every response, plus, stage 2, the argmax tokens at the y+ positions
  (a second target column of the same ``linear_logprob`` call);
* stage 1: ``dpo_objective(text pairs)``; stage 2: ``w_t * DPO(y+ vs y-) + w_n * DPO(y+ vs a)``.

:func:`model_logps` is one model's part of a step (noised argmax, then scoring) and
:func:`preference_step` the whole step (reference, policy, loss); the training loop, the
reference precompute and the benchmark all run these two.

So a stage-2 step is 1 grad + 3 no-grad packed forwards, against POVID's 3 + 3 full forwards with
per-sequence images and full logits. The frozen vision tower (and projector) run once per image per
step: the clean and the noised images each go through it once (:class:`StepImages`), and every
forward of the step (reference, policy, noised passes) reads those features.

Host syncs: a micro-step reads nothing back from the device. The batch's index tensors are made on
the host (``make_batch``); metrics are returned as 0-d device tensors, which the loop reads once
per log interval (:mod:`halluremedy.train.loop`).

The reference is the policy with its LoRA adapters disabled (POVID's choice, no second copy), a
frozen copy (full fine-tune), or log-probs precomputed once and cached on disk.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from halluremedy.data.conversation import ConversationEncoder
from halluremedy.data.images import ImageBank
from halluremedy.data.preference import PreferenceRecord
from halluremedy.models.packed import (
    BACKEND_NAMES,
    PackedBatch,
    StepImages,
    as_step_images,
    choose_backend,
    llava_parts,
    pack_groups,
    response_rows,
    score_response_rows,
)
from halluremedy.train.distributed import all_reduce_sum, barrier, current_shard
from halluremedy.train.loop import LoopConfig, train_loop
from halluremedy.train.losses import PairLogps, dpo_objective, nll_term, povid_stage2_loss
from halluremedy.train.povid import NOISE_POSITION_RULES, channel_stats, noise_argmax, noise_column, noised_images
from halluremedy.train.sft import EpochSampler

ReferenceMode = Literal["adapter", "copy", "precomputed"]


@dataclass(frozen=True)
class PreferenceObjective:
    """What a step optimises. Stage 2 is POVID's ``w_t * L_text + w_n * L_noise`` (sigmoid, same beta)."""

    stage: int = 1
    loss_type: str = "sigmoid"  # stage 1: "sigmoid" | "ipo" | "hinge"
    beta: float = 0.1
    label_smoothing: float = 0.0
    nll_alpha: float = 0.0  # RPO: + alpha * mean token NLL of y+
    noise_step: int = 500
    weight_text: float = 0.5
    weight_noise: float = 0.5
    # Which y+ positions score their noised argmax a_t (elsewhere a_t := y+_t, so the position
    # cancels). "all": every one (POVID). Else a comma-joined subset of NOISE_POSITION_RULES, all of
    # which must hold. "seen": the model's clean-image argmax is the y+ token. "novel": a_t occurs
    # nowhere in y+ (a word the ground truth never says, not a reordering of what it does say,
    # nor its stop). "present": a_t is no token of a word naming a class present in the image
    # (synonyms included; needs the batches' ``present_words``).
    noise_positions: str = "all"

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        rules = self.noise_position_rules
        if self.noise_positions != "all" and (not rules or any(r not in NOISE_POSITION_RULES for r in rules)):
            raise ValueError(f"noise_positions must be 'all' or a comma-joined subset of {NOISE_POSITION_RULES}, "
                             f"got {self.noise_positions!r}")

    @property
    def noise_term(self) -> bool:
        """Whether a step runs the noised forwards: stage 2 with ``weight_noise > 0`` (at 0, POVID's
        text-only ablation, the noise term would only be computed to be multiplied by zero)."""
        return self.stage == 2 and self.weight_noise > 0

    @property
    def noise_position_rules(self) -> frozenset[str]:
        return frozenset() if self.noise_positions == "all" else frozenset(self.noise_positions.split(","))

    def check_batches(self, batches: PreferenceBatches) -> None:
        if self.stage == 2 and "present" in self.noise_position_rules and not batches.has_present_words:
            raise ValueError("noise_positions rule 'present' needs the images' present classes: build the "
                             "PreferenceBatches with present_words (from the dataset's annotations)")


@dataclass(frozen=True)
class EncodedRecord:
    image: str
    prompt: list[int]  # <s>USER: <image>*N\n{q} ASSISTANT:
    chosen: list[int]  # answer ids + </s>
    rejected: list[list[int]]
    present: tuple[int, ...] = ()  # tokens of the words naming the image's present classes


@dataclass
class PreferenceBatch:
    """One micro-batch.

    records: (B,) indices into the dataset; files: B image names.
    scored: pack of ``[P_b | y+_b | y-_b1 .. y-_bk]``; response 0 of each group is y+.
    chosen_only: pack of ``[P_b | y+_b]`` (the noised forward's input).
    pairs: (P, 2) long, (chosen response, rejected response) indices into ``scored``'s responses.
    chosen_index: (B,) long, the y+ response of each record in ``scored``.
    chosen_tokens: (N,) bool over ``scored.targets``: True at y+ tokens (in ``chosen_only`` order).
    present: (M, 2) long, (y+ response index in ``scored``, token) for every token of a word naming
    a class present in that record's image.
    chosen_rows: (N_chosen,) long, the positions of ``chosen_tokens`` (index, not mask: no host sync).
    """

    records: list[int]
    files: list[str]
    scored: PackedBatch
    chosen_only: PackedBatch
    pairs: torch.Tensor
    chosen_index: torch.Tensor
    chosen_tokens: torch.Tensor
    present: torch.Tensor
    chosen_rows: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PreferenceBatch:
        """The device-side tensors on ``device`` (packs cached per device; see ``PackedBatch.to``)."""
        return PreferenceBatch(self.records, self.files, self.scored.to(device), self.chosen_only.to(device),
                               *(t.to(device, non_blocking=True) for t in (self.pairs, self.chosen_index,
                                                                            self.chosen_tokens, self.present,
                                                                            self.chosen_rows)))


class PreferenceBatches:
    """Encodes every record once; ``batch(i)`` is a pure function of ``(seed, i)``.

    ``present_words``: image file name -> the surface words naming the classes present in it (for
    ``noise_positions`` rule "present"); None when there are no annotations to read them from."""

    def __init__(self, records: Sequence[PreferenceRecord], encoder: ConversationEncoder, bank: ImageBank,
                 batch_size: int, seed: int, present_words: Mapping[str, Sequence[str]] | None = None):
        missing = [r.image for r in records if r.image not in bank]
        if missing:
            raise FileNotFoundError(f"{len(missing)} preference records name images not in the dataset, "
                                    f"e.g. {missing[0]!r}")
        self.encoded = []
        present_of: dict[str, tuple[int, ...]] = {}  # per image: its records share it
        for k, r in enumerate(records):
            prompt = encoder.prompt_ids(r.prompt, first=True)
            chosen = encoder.response_ids(r.chosen)
            rejected = [encoder.response_ids(x) for x in r.rejected]
            encoder.check_length(len(prompt) + max(len(chosen), *map(len, rejected)), f"record {k} ({r.id})")
            if present_words is not None and r.image not in present_of:
                present_of[r.image] = tuple(sorted({t for w in present_words.get(r.image, ())
                                                    for t in encoder.response_ids(w)[:-1]}))
            self.encoded.append(EncodedRecord(r.image, prompt, chosen, rejected, present_of.get(r.image, ())))
        self.has_present_words = present_words is not None
        self.bank, self.batch_size = bank, batch_size
        self.image_token_id = encoder.image_token_id
        self.sampler = EpochSampler(len(records), seed)

    def __len__(self) -> int:
        return len(self.encoded)

    def epoch_of(self, index: int) -> int:
        return self.sampler.epoch_of(index, self.batch_size)

    def batch(self, index: int) -> PreferenceBatch:
        return self.make_batch(self.sampler.batch_rows(index, self.batch_size))

    def make_batch(self, rows: list[int]) -> PreferenceBatch:
        return make_preference_batch([self.encoded[r] for r in rows], rows, self.image_token_id)


def make_preference_batch(recs: Sequence[EncodedRecord], rows: list[int], image_token_id: int) -> PreferenceBatch:
    """The micro-batch of encoded records ``recs`` (dataset indices ``rows``), packed on the host."""
    scored = pack_groups([r.prompt for r in recs], [[r.chosen, *r.rejected] for r in recs],
                         image_token_id=image_token_id)
    chosen_only = pack_groups([r.prompt for r in recs], [[r.chosen] for r in recs])
    pairs, chosen_index, chosen_rows, first, token = [], [], [], 0, 0
    for r in recs:
        pairs += [(first, first + 1 + j) for j in range(len(r.rejected))]
        chosen_index.append(first)
        chosen_rows += range(token, token + len(r.chosen))  # y+ comes first in its group
        first += 1 + len(r.rejected)
        token += len(r.chosen) + sum(map(len, r.rejected))
    is_chosen = torch.zeros(scored.num_responses, dtype=torch.bool)
    is_chosen[chosen_index] = True
    present = torch.tensor([(c, t) for c, r in zip(chosen_index, recs) for t in r.present],
                           dtype=torch.long).view(-1, 2)
    return PreferenceBatch(rows, [r.image for r in recs], scored, chosen_only, torch.tensor(pairs),
                           torch.tensor(chosen_index), is_chosen[scored.token_response], present,
                           torch.tensor(chosen_rows, dtype=torch.long))


class Reference:
    """Where reference log-probs come from. ``scope(policy)`` yields the module to run as reference."""

    def __init__(self, mode: ReferenceMode, policy: torch.nn.Module | None = None):
        self.mode = mode
        self.frozen = None
        if mode == "copy":
            self.frozen = copy.deepcopy(policy).eval().requires_grad_(False)
        self.cache: dict[str, torch.Tensor] | None = None

    @contextlib.contextmanager
    def scope(self, policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
        if self.mode == "adapter":
            with policy.disable_adapter():
                yield policy
        elif self.mode == "copy":
            yield self.frozen
        else:
            raise RuntimeError("precomputed reference: no model to run")


@dataclass
class StepLogps:
    """Per-response sums of one model on one batch; ``noise`` = the argmax column, at y+ only."""

    summed: torch.Tensor  # (R,)
    lengths: torch.Tensor  # (R,)
    noise: torch.Tensor | None  # (R,) or None


def score_batch(model: torch.nn.Module, batch: PreferenceBatch, clean: torch.Tensor | StepImages,
                argmax_tokens: torch.Tensor | None, *, rules: frozenset[str] = frozenset()) -> StepLogps:
    """Every response's log-prob on the (B, C, H, W) clean images, plus (``argmax_tokens``: (N_chosen,)
    a_t, the noised argmax at the y+ positions) the noise column, kept where ``rules`` hold
    (:func:`~halluremedy.train.povid.noise_column`). No host sync (index tensors, not masks)."""
    device = clean.device
    scored = batch.scored.to(device)
    rows = response_rows(model, scored, clean)                                     # (N, D)
    column = None
    if argmax_tokens is not None:
        if batch.chosen_rows is None:
            raise ValueError("a PreferenceBatch without chosen_rows (build it with PreferenceBatches.make_batch)")
        column = noise_column(model, scored, batch.chosen_rows.to(device, non_blocking=True), rows, argmax_tokens,
                              batch.present, rules)
    out = score_response_rows(model, scored, rows, extra_targets=column)
    return StepLogps(out.summed, out.lengths.to(out.summed.device), out.extra_summed)


def model_logps(model: torch.nn.Module, batch: PreferenceBatch, clean: torch.Tensor | StepImages,
                noised: torch.Tensor | StepImages | None, *, rules: frozenset[str] = frozenset()) -> StepLogps:
    """One model's part of a step: with ``noised`` (stage 2, (B, C, H, W)) its argmax a_t at every y+
    position under the noised images (no grad), then one scoring forward of every response on the
    clean images, a_t as the second target column. Grad flows as the caller's mode allows."""
    argmax = noise_argmax(model, batch.chosen_only, noised) if noised is not None else None
    return score_batch(model, batch, clean, argmax, rules=rules)


def reference_logps(policy: torch.nn.Module, reference: Reference, batch: PreferenceBatch,
                    clean: torch.Tensor | StepImages, noised: torch.Tensor | StepImages | None, *,
                    rules: frozenset[str] = frozenset()) -> StepLogps:
    """The reference model's :func:`model_logps`, without grad."""
    with torch.no_grad(), reference.scope(policy) as ref:
        return model_logps(ref, batch, clean, noised, rules=rules)


def preference_loss(objective: PreferenceObjective, batch: PreferenceBatch, pol: StepLogps, ref: StepLogps
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean loss of one micro-batch and its metrics, as detached 0-d device tensors (read them
    when logging: converting each one would be a host sync)."""
    c, r = batch.pairs[:, 0].to(pol.summed.device), batch.pairs[:, 1].to(pol.summed.device)
    ref_summed = ref.summed.to(pol.summed.device)
    text = PairLogps(pol.summed[c], pol.summed[r], ref_summed[c], ref_summed[r])
    if objective.stage == 1:
        out = dpo_objective(text, loss_type=objective.loss_type, beta=objective.beta,
                            label_smoothing=objective.label_smoothing, alpha=objective.nll_alpha,
                            chosen_lengths=pol.lengths[c], rejected_lengths=pol.lengths[r])
        losses, metrics = out.losses, out.metrics()
    else:
        noise = None if not objective.noise_term else \
            PairLogps(pol.summed[c], pol.noise[c], ref_summed[c], ref.noise.to(pol.summed.device)[c])
        out = povid_stage2_loss(text, noise, beta=objective.beta, weight_text=objective.weight_text,
                                weight_noise=objective.weight_noise)
        losses, metrics = out.losses, out.metrics()
        if objective.nll_alpha:
            nll = nll_term(pol.summed[c], pol.lengths[c])
            losses = losses + objective.nll_alpha * nll
            metrics["nll"] = nll.detach().mean()
    metrics = {k: v.detach() for k, v in metrics.items()}
    metrics["loss"] = losses.detach().mean()
    return losses.mean(), metrics


def preference_step(policy: torch.nn.Module, reference: Reference, objective: PreferenceObjective,
                    batch: PreferenceBatch, clean: torch.Tensor | StepImages,
                    noised: torch.Tensor | StepImages | None, ref: StepLogps | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch's forwards, in ``train_preference``'s order: the reference (noised argmax,
    then scored; skipped when ``ref`` comes from the cache), the policy's noised argmax, the policy
    scored with grad; then the loss. The clean and noised images each go through the frozen tower
    once for all of these forwards. Reads nothing back from the device."""
    clean = as_step_images(clean)
    noised = None if noised is None else as_step_images(noised)
    rules = objective.noise_position_rules
    if ref is None:
        ref = reference_logps(policy, reference, batch, clean, noised, rules=rules)
    pol = model_logps(policy, batch, clean, noised, rules=rules)
    return preference_loss(objective, batch, pol, ref)


def precompute_reference(model: torch.nn.Module, batches: PreferenceBatches, objective: PreferenceObjective,
                         epochs: int, seed: int, path: str | os.PathLike, *, batch_size: int = 16) -> dict:
    """Score every record with the reference once and cache the sums in ``path`` (safetensors).

    Saved: ``chosen`` (n,), ``rejected`` (n, k_max) (NaN-padded), and ``noise`` (epochs, n) where the
    objective has a noise term (else (0, n)):
    the reference's argmax-token sums under the noise each record gets in each epoch. Keyed by
    record index; the file's metadata holds the seed, stage and record count it is valid for. Under
    torchrun every rank scores its share of the records and gets the whole cache; rank 0 writes the file.
    """
    objective.check_batches(batches)
    device = next(model.parameters()).device
    shard = current_shard()
    n = len(batches)
    k_max = max(len(e.rejected) for e in batches.encoded)
    # Each rank scores every world-th chunk of records; the sums of the zero-filled tables are the cache.
    chosen = torch.zeros(n)
    rejected = torch.zeros(n, k_max)
    noise = torch.zeros(epochs if objective.noise_term else 0, n)
    model.eval()
    starts = range(shard.rank * batch_size, n, batch_size * shard.world)
    with torch.no_grad():
        for start in tqdm(starts, desc="reference log-probs", leave=False, disable=not shard.is_main):
            rows = list(range(start, min(n, start + batch_size)))
            batch = batches.make_batch(rows)
            images01 = batches.bank.get01(batch.files).to(device)
            clean = batches.bank.normalize(images01).to(model.dtype)
            logps = model_logps(model, batch, clean, None)
            chosen[rows] = logps.summed[batch.chosen_index].cpu()
            rejected[rows] = float("nan")  # padding where a record has fewer than k_max rejected answers
            for pos, (c, r) in zip(_pair_rows(batch), batch.pairs.tolist()):
                rejected[rows[pos], r - c - 1] = logps.summed[r].cpu()
            for epoch in range(noise.shape[0]):
                noised = noised_images(batches.bank, images01, rows, seed=seed, epoch=epoch,
                                       step=objective.noise_step).to(model.dtype)
                logps = model_logps(model, batch, clean, noised, rules=objective.noise_position_rules)
                noise[epoch, rows] = logps.noise[batch.chosen_index].cpu()
    tensors = {"chosen": all_reduce_sum(chosen), "rejected": all_reduce_sum(rejected), "noise": all_reduce_sum(noise)}
    meta = {"seed": str(seed), "stage": str(objective.stage), "records": str(n), "epochs": str(epochs),
            "noise_step": str(objective.noise_step), "noise_positions": objective.noise_positions}
    if shard.is_main:
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    barrier()
    return tensors


def _pair_rows(batch: PreferenceBatch) -> list[int]:
    """For each pair, the position of its record in the batch."""
    groups = batch.scored.response_group.tolist()
    return [groups[c] for c in batch.pairs[:, 0].tolist()]


def cached_reference(cache: dict[str, torch.Tensor], batch: PreferenceBatch, epoch: int, num_responses: int
                     ) -> StepLogps:
    """Reference sums of one batch, laid out like ``score_batch``'s output, from the cache."""
    summed = torch.empty(num_responses)
    noise = torch.zeros(num_responses) if cache["noise"].numel() else None
    for pos, (c, r) in zip(_pair_rows(batch), batch.pairs.tolist()):
        rec = batch.records[pos]
        summed[c] = cache["chosen"][rec]
        summed[r] = cache["rejected"][rec, r - c - 1]
        if noise is not None:
            noise[c] = cache["noise"][epoch, rec]
    return StepLogps(summed, torch.empty(0), noise)


def train_preference(policy: torch.nn.Module, batches: PreferenceBatches, objective: PreferenceObjective,
                     reference: Reference, cfg: LoopConfig, out_dir: str | os.PathLike, *, seed: int,
                     resume: bool = False, allow_changes: bool = False, settings: Mapping[str, Any] | None = None
                     ) -> list[dict]:
    """Run the preference objective through the shared loop (same checkpoints, resume, non-finite
    guard; ``settings``, ``allow_changes``: see :func:`~halluremedy.train.loop.train_loop`)."""
    objective.check_batches(batches)
    device = next(policy.parameters()).device

    llava, _ = llava_parts(policy)
    backends: list[str] = []

    def micro_step(step: int, micro: int) -> tuple[torch.Tensor, dict[str, Any]]:
        index = step * cfg.grad_accum + micro
        backend = choose_backend(llava, device)  # inside the loop's autocast, as the forwards will see it
        if backend not in backends:
            backends.append(backend)
            tqdm.write(f"packed attention on {device}: {backend} ({BACKEND_NAMES[backend]})")
        batch, images01, ref, epoch = load_micro_batch(batches, index, reference, device, backend,
                                                       noise_term=objective.noise_term)
        clean = batches.bank.normalize(images01).to(policy.dtype)
        noised = None
        if objective.noise_term:
            noised = noised_images(batches.bank, images01, batch.records, seed=seed, epoch=epoch,
                                   step=objective.noise_step).to(policy.dtype)
        loss, metrics = preference_step(policy, reference, objective, batch, clean, noised, ref)
        metrics["batch"] = f"micro-batch {index}, records {batch.records}"
        return loss, metrics

    return train_loop(policy, micro_step, cfg, out_dir, resume=resume, allow_changes=allow_changes,
                      settings=settings, desc=f"dpo stage {objective.stage}")


def load_micro_batch(batches: PreferenceBatches, index: int, reference: Reference, device: torch.device,
                     backend: str | None = None, *, noise_term: bool = False
                     ) -> tuple[PreferenceBatch, torch.Tensor, StepLogps | None, int]:
    """The host side of micro-batch ``index``: its batch (index tensors built on the CPU, then moved
    to ``device`` with the attention structures ``backend`` reads built: for the ``[P | y+]`` pack
    too only with ``noise_term``, as only the noised forwards read it), its [0, 1] images on
    ``device``, the cached reference sums (``--reference precomputed``, else None) and its epoch.
    Every host-side read of the step happens here, on CPU tensors; nothing after it reads the device."""
    batch = batches.batch(index)
    epoch = batches.epoch_of(index)
    ref = None
    if reference.mode == "precomputed":
        ref = cached_reference(reference.cache, batch, epoch, batch.scored.num_responses)
        ref = StepLogps(ref.summed.to(device), ref.lengths, None if ref.noise is None else ref.noise.to(device))
    images01 = batches.bank.get01(batch.files).to(device, non_blocking=True)
    channel_stats(batches.bank)  # read once, here: the noise needs them as Python floats
    batch = batch.to(device)
    for packed in (batch.scored, batch.chosen_only) if noise_term else (batch.scored,):
        packed.image_rows(batches.image_token_id)
        if backend is not None:
            packed.prepare_attention(backend)
    return batch, images01, ref, epoch


def load_reference_cache(path: str | os.PathLike, *, seed: int, stage: int, records: int,
                         noise_positions: str = "all", noise_term: bool = False) -> dict[str, torch.Tensor]:
    """Load a cache written by ``precompute_reference``; refuse one made for other data or settings,
    or without the noise sums a run with a noise term (``noise_term``) reads."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    want = {"seed": str(seed), "stage": str(stage), "records": str(records), "noise_positions": noise_positions}
    if any(meta.get(k, "all" if k == "noise_positions" else None) != v for k, v in want.items()):
        raise ValueError(f"{path}: reference cache made for {meta}, not {want}")
    cache = load_file(str(path))
    if noise_term and not cache["noise"].numel():
        raise ValueError(f"{path}: reference cache has no noise sums (made with weight_noise 0); this run has a "
                         "noise term: delete the file to recompute it")
    return cache
