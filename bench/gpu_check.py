"""The CUDA path in one command: kernels compiled, packed exactness per backend, whole training steps.

    python bench/gpu_check.py                  # one H100 / H200, about 8 minutes
    python bench/gpu_check.py --smoke          # the same code paths on the CPU at toy size (CI)

Install first (the machine needs no network after it): ``pip install -e ".[bench]" ./kernels`` (trl,
liger-kernel); flash-attn is optional (``pip install flash-attn --no-build-isolation``, or a carried
wheel): without it the packed attention runs on FlexAttention, which torch has built in.

Stages (each one's failure is recorded and the next one runs):

1. ``kernels``: every ``vlm_kernels`` op with ``impl="auto"`` (compiled Triton on CUDA, torch on the
   CPU) against a float64 reference: ``linear_logprob`` (fp32 and bf16, K = 2, bias, ignored rows,
   every gradient), ``linear_argmax``, ``diffusion_noise`` (the recovered eps is N(0, 1)).
2. ``exactness``: the packed forward of a tiny random LLaVA against one unpacked HF forward per
   response (float64 oracle), in fp32 (1e-4) and under bf16 autocast (no worse than eager bf16), for
   every attention backend available (``sdpa``, ``flex``, ``varlen`` with flash-attn; on the CPU flex
   is forward-only), gradients included where the backend has a backward.
3. ``syncs``: host syncs of a tiny DPO run (CUDA's sync debug mode on a GPU, ``SyncCounter`` on the CPU):
   per optimiser step, the loop's one finiteness verdict; per log interval, one metrics read.
4. ``training``: stage 1 and stage 2 at LLaVA-1.5-7B geometry (random weights from config, LoRA r128,
   bf16, ``--batch`` 16 pairs, gradient checkpointing off and on) for ours (``train_preference``
   itself, plain and with ``--fused liger`` / ``compile``), TRL's DPOTrainer, TRL + Liger's kernels
   (stage 1) and POVID-style (stage 2). Whole optimiser steps are timed: data (images read to the
   device, ours also the batch build), noise, forward, backward, clipping, AdamW. Reported per row:
   samples/s, tokens/s, MFU against ONE numerator per stage -- the bound's FLOPs per pair
   (``flops.bound_flops``: TRL's duplicated prompt work earns nothing) -- peak memory, the attention
   backend that ran.

Writes ``--out`` (JSON) and the same with ``.md``; ``--smoke`` writes into a temporary folder unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.metadata
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flops  # noqa: E402
from baselines import PROVIDERS  # noqa: E402
from gpu_throughput import peak_flops, synthetic_workload  # noqa: E402

from halluremedy.models import attention, packed  # noqa: E402
from halluremedy.models.fused import apply_liger, compile_decoder  # noqa: E402
from halluremedy.models.llava import TinyLlavaSpec, build_tiny_llava  # noqa: E402
from halluremedy.models.lora import add_lora  # noqa: E402
from halluremedy.train import loop as train_loop_module  # noqa: E402
from halluremedy.train.dpo import (  # noqa: E402
    EncodedRecord,
    PreferenceBatches,
    PreferenceObjective,
    Reference,
    train_preference,
)
from halluremedy.train.host_syncs import SyncCounter, cuda_sync_warnings, paused  # noqa: E402
from halluremedy.train.loop import LoopConfig  # noqa: E402
from halluremedy.train.povid import noise_seed, noised_pixels  # noqa: E402
from halluremedy.train.sft import EpochSampler  # noqa: E402

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, -1, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, -1, 1, 1)


# ---------------------------------------------------------------- helpers


def _record(rows: list[dict], stage: str, name: str, fn: Callable[[], dict]) -> None:
    """Run one check; its dict (plus ``ok`` and the seconds it took) or its error goes into ``rows``."""
    t0 = time.perf_counter()
    try:
        row = {"stage": stage, "name": name, "ok": True, **fn()}
    except Exception as e:  # one failure must not lose the rest of a scarce GPU session
        row = {"stage": stage, "name": name, "ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}",
               "where": traceback.format_exc().splitlines()[-3:]}
    row["seconds"] = round(time.perf_counter() - t0, 2)
    rows.append(row)
    print(json.dumps(row), flush=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available_backends(device: torch.device) -> list[str]:
    out = ["sdpa", "flex"]
    if device.type == "cuda" and attention.flash_attn_varlen_func is not None:
        out.append("varlen")
    return out


# ---------------------------------------------------------------- 1. kernels


def kernel_checks(device: torch.device) -> dict:
    from vlm_kernels import diffusion_noise, linear_argmax, linear_logprob, linear_logprob_reference
    from vlm_kernels.diffusion_noise import noise_coefficients

    g = torch.Generator().manual_seed(0)
    n, d, v = 301, 136, 5003  # odd sizes
    out = {}
    for dtype, tol, grad_tol in ((torch.float32, 2e-3, 1e-3), (torch.bfloat16, 5e-2, 2e-2)):
        hidden = torch.randn(n, d, generator=g).to(device, dtype).requires_grad_()
        weight = (torch.randn(v, d, generator=g) * 0.3).to(device, dtype).requires_grad_()
        bias = torch.randn(v, generator=g).to(device, dtype).requires_grad_()
        targets = torch.randint(0, v, (n, 2), generator=g).to(device)
        targets[::5] = -100
        targets[1::3, 1] = -1
        logp = linear_logprob(hidden, weight, targets, bias)
        grads = torch.autograd.grad(logp.sum(), (hidden, weight, bias))
        h64, w64, b64 = (t.detach().double().requires_grad_() for t in (hidden, weight, bias))
        want = linear_logprob_reference(h64, w64, targets, b64)
        want_grads = torch.autograd.grad(want.sum(), (h64, w64, b64))
        err = (logp.double() - want).abs().max().item()
        grad_err = max(((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()
                       for a, b in zip(grads, want_grads))
        if err > tol or grad_err > grad_tol:
            raise AssertionError(f"linear_logprob {dtype}: error {err:.3g}, gradient rel. error {grad_err:.3g}")
        out[f"linear_logprob_{str(dtype)[6:]}_err"] = err
        out[f"linear_logprob_{str(dtype)[6:]}_grad_rel_err"] = grad_err
    hidden = torch.randn(n, d, generator=g).to(device)
    weight = torch.randn(v, d, generator=g).to(device)
    got = linear_argmax(hidden, weight)
    logits = hidden.double() @ weight.double().T
    # a mismatch is allowed only at a near-tie (fp32 accumulation order)
    gap = logits.max(1).values - logits.gather(1, got[:, None])[:, 0]
    if gap.max().item() > 1e-3:
        raise AssertionError(f"linear_argmax: a pick {gap.max().item():.3g} below the maximum")
    images = torch.rand(4, 3, 33, 47, generator=g).to(device)
    noised = diffusion_noise(images, 500, seed=7, mean=CLIP_MEAN.flatten().tolist(), std=CLIP_STD.flatten().tolist())
    coef = noise_coefficients(images, 500, "povid", CLIP_MEAN.flatten().tolist(), CLIP_STD.flatten().tolist())
    scale, noise, shift = coef.view(4, 3, 3, 1, 1).unbind(2)
    eps = (noised - scale * images - shift) / noise
    if abs(eps.mean().item()) > 0.05 or abs(eps.std().item() - 1) > 0.05:
        raise AssertionError(f"diffusion_noise: eps mean {eps.mean().item():.3g}, std {eps.std().item():.3g}")
    out.update(argmax_max_gap=gap.max().item(), noise_eps_mean=eps.mean().item(), noise_eps_std=eps.std().item(),
               impl="triton" if device.type == "cuda" else "torch")
    return out


# ---------------------------------------------------------------- 2. exactness


def _tiny_llava(kv_heads: int = 2):
    model, processor = build_tiny_llava(TinyLlavaSpec(), ["a b c d e f g h"], seed=0)
    config = copy.deepcopy(model.config)
    config.text_config.num_key_value_heads = kv_heads
    torch.manual_seed(0)
    return type(model)(config).eval(), processor.tokenizer


def _tiny_groups(tokenizer, image_tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image, vocab = tokenizer.image_token_id, len(tokenizer)

    def ids(n: int) -> list[int]:
        return [t if t != image else 3 for t in torch.randint(3, vocab, (n,), generator=g).tolist()]

    prompts = [[1] + [image] * image_tokens + ids(k) for k in (5, 9, 3)]
    responses = [[ids(4)], [ids(7), ids(2)], [ids(6), ids(1), ids(9)]]
    return prompts, responses


def _unpacked(model, prompts, responses, pixel_values) -> torch.Tensor:
    sums = []
    for prompt, group, i in zip(prompts, responses, range(len(prompts))):
        for response in group:
            ids = torch.tensor([prompt + response], device=pixel_values.device)
            logits = model(input_ids=ids, pixel_values=pixel_values[i:i + 1]).logits[0]
            logp = logits.double().log_softmax(-1)[len(prompt) - 1:-1]
            sums.append(logp.gather(1, torch.tensor(response, device=logits.device)[:, None]).sum())
    return torch.stack(sums)


def packed_exactness(device: torch.device, backend: str, dtype: str) -> dict:
    base, tokenizer = _tiny_llava()
    prompts, responses = _tiny_groups(tokenizer, base.config.image_seq_length)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    oracle_model = copy.deepcopy(base).double()
    oracle_model.set_attn_implementation("sdpa")
    with torch.no_grad():
        oracle = _unpacked(oracle_model, prompts, responses, pixel_values.double())
    model = copy.deepcopy(base).to(device)
    model.set_attn_implementation("sdpa")
    pixels = pixel_values.to(device)
    pack = packed.pack_groups(prompts, responses, image_token_id=tokenizer.image_token_id)
    grad = not (backend == "flex" and device.type == "cpu")  # FlexAttention has no CPU backward
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
        with autocast, torch.set_grad_enabled(grad):
            got = packed.packed_response_logprobs(model, pack, pixels, backend=backend)
            if grad:
                got.summed.sum().backward()
        err = (got.summed.detach().double().cpu() - oracle).abs().max().item()
        row = {"backend": backend, "dtype": dtype, "device": str(device), "max_abs_err": err, "backward": grad}
        if dtype == "fp32":
            if err > 1e-4:
                raise AssertionError(f"fp32 packed vs float64 unpacked: {err:.3g} > 1e-4")
            if grad:
                grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
                model.zero_grad()
                model.set_attn_implementation("sdpa")
                _unpacked(model, prompts, responses, pixels).float().sum().backward()
                # relative per tensor, floored at 1e-4 of the largest gradient (a key bias's gradient is 0 + rounding)
                scale = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
                rel = max(((grads[n] - p.grad).abs().max() / p.grad.abs().max().clamp(min=1e-4 * scale)).item()
                          for n, p in model.named_parameters() if p.grad is not None)
                row["grad_rel_err"] = rel
                if rel > 1e-3:
                    raise AssertionError(f"fp32 gradients: relative error {rel:.3g} > 1e-3")
        else:
            model.set_attn_implementation("sdpa")
            with autocast, torch.no_grad():
                eager = _unpacked(model, prompts, responses, pixels)
            eager_err = (eager.cpu() - oracle).abs().max().item()
            row["eager_bf16_err"] = eager_err
            if err > 2 * eager_err + 1e-2:
                raise AssertionError(f"bf16 packed error {err:.3g} > 2 x eager bf16 error {eager_err:.3g} + 1e-2")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return row


# ---------------------------------------------------------------- synthetic data for ours


class SyntheticBank:
    """An ImageBank stand-in: random [0, 1] images made on the host per call (as decoded images are)."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.mean, self.std = size, CLIP_MEAN.clone(), CLIP_STD.clone()
        self.generator = torch.Generator().manual_seed(seed)

    def __contains__(self, name: str) -> bool:
        return True

    def get01(self, files: Sequence[str]) -> torch.Tensor:
        return torch.rand(len(files), 3, self.size, self.size, generator=self.generator)

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01 - self.mean.to(images01.device)) / self.std.to(images01.device)


def synthetic_batches(config, records: int, batch: int, prompt_text: int, response: int, seed: int = 0
                      ) -> PreferenceBatches:
    """``records`` random LLaVA-shaped records (576 placeholders + text, one rejected answer) served
    through the real ``PreferenceBatches`` (batch build on the host, per step)."""
    image_id = config.image_token_index
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, image_id, (n,), generator=g).tolist()

    batches = PreferenceBatches.__new__(PreferenceBatches)
    batches.encoded = [EncodedRecord(f"{i}.png", [1] + [image_id] * config.image_seq_length + ids(prompt_text - 1),
                                     ids(response - 1) + [2], [ids(response - 1) + [2]]) for i in range(records)]
    batches.bank = SyntheticBank(config.vision_config.image_size, seed)
    batches.batch_size, batches.image_token_id, batches.has_present_words = batch, image_id, False
    batches.sampler = EpochSampler(records, seed)
    return batches


# ---------------------------------------------------------------- 4. training steps


@contextlib.contextmanager
def step_clock(device: torch.device):
    """Times whole optimiser steps: the end of each AdamW step (device synchronised) is stamped."""
    stamps: list[float] = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        _sync(device)
        stamps.append(time.perf_counter())
        return out

    torch.optim.AdamW.step = step
    try:
        yield stamps
    finally:
        torch.optim.AdamW.step = original


def _intervals(stamps: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]


def _gradient_checkpointing(model: torch.nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "gradient_checkpointing_enable") and hasattr(module, "config"):
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return


def run_ours(config, stage: int, ckpt: bool, fused: str | None, args, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    with torch.device(device):
        base = flops.LlavaForConditionalGeneration(copy.deepcopy(config)).to(dtype)
    policy = add_lora(base, r=128, alpha=256, dropout=0.05)
    with torch.no_grad():  # adapters as after some training, so the loss is not log 2
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    if ckpt:
        _gradient_checkpointing(policy)
    if fused == "liger":
        apply_liger(policy)
    elif fused == "compile":
        compile_decoder(policy)
    total = args.warmup + args.steps
    batches = synthetic_batches(config, args.batch * total, args.batch, args.prompt_text, args.response)
    objective = PreferenceObjective(stage=stage)
    cfg = LoopConfig(steps=total, lr=1e-6, log_every=total, bf16=True, max_nonfinite_steps=total)
    calls_before = dict(packed.backend_calls)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    with tempfile.TemporaryDirectory() as out, step_clock(device) as stamps:
        original = train_loop_module.save_checkpoint
        train_loop_module.save_checkpoint = lambda *a, **k: None  # not part of a step
        try:
            rows = train_preference(policy, batches, objective, Reference("adapter"), cfg, out, seed=0)
        finally:
            train_loop_module.save_checkpoint = original
    backends = {k: v - calls_before.get(k, 0) for k, v in packed.backend_calls.items() if v > calls_before.get(k, 0)}
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"seconds_per_step": statistics.median(_intervals(stamps, args.warmup)), "backend": backends,
            "loss": rows[-1]["loss"] if rows else None, "nonfinite_steps": rows[-1]["nonfinite_steps"] if rows else None,
            "peak_mem_gib": None if peak is None else peak / 2**30,
            "peak_over_weights_gib": None if peak is None else (peak - weights) / 2**30}


def run_peer(name: str, workload, stage: int, ckpt: bool, args, device: torch.device) -> dict:
    step = PROVIDERS[name].make(workload)
    model = step.model
    if ckpt:
        _gradient_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    bank = SyntheticBank(workload.clean.shape[-1])
    keys = [noise_seed(0, 0, r) for r in range(workload.clean.shape[0])]

    def whole_step() -> torch.Tensor:
        images01 = bank.get01(["x"] * workload.clean.shape[0]).to(device, non_blocking=True)  # data
        workload.clean.copy_(bank.normalize(images01))  # in place: the step's inputs hold these tensors
        if stage == 2:
            workload.noised.copy_(noised_pixels(bank, images01, keys, 500))
        loss = step()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    with step_clock(device) as stamps:
        for _ in range(args.warmup + args.steps):
            loss = whole_step()
    attn = next((m.config._attn_implementation for m in model.modules()
                 if getattr(getattr(m, "config", None), "model_type", None) == "llama"), "?")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"seconds_per_step": statistics.median(_intervals(stamps, args.warmup)), "backend": {attn: 1},
            "loss": float(loss), "peak_mem_gib": None if peak is None else peak / 2**30,
            "peak_over_weights_gib": None if peak is None else (peak - weights) / 2**30}


def training(rows: list[dict], config, args, device: torch.device, dtype: torch.dtype) -> None:
    pairs = args.batch
    groups = flops.llava_groups(response=args.response, prompt_text=args.prompt_text,
                                image_tokens=config.image_seq_length, groups=pairs)
    tokens = sum(g.prompt + g.chosen + sum(g.rejected) for g in groups)
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    bound = {s: flops.bound_flops(config, groups, s) for s in (1, 2)}
    cuda = device.type == "cuda"
    trl = importlib.util.find_spec("trl") is not None

    def finish(fn, stage: int, ckpt: bool, provider: str) -> Callable[[], dict]:
        def run() -> dict:
            m = fn()
            t = m.pop("seconds_per_step")
            return {"provider": provider, "training_stage": stage, "gradient_checkpointing": ckpt, "pairs": pairs,
                    "samples_per_s": pairs / t, "tokens_per_s": tokens / t, "seconds_per_step": t,
                    "bound_flops_per_pair": bound[stage] / pairs,
                    "mfu_vs_bound": bound[stage] / t / peak if peak else None, **m}
        return run

    workload = None
    plan: list[tuple[str, int, bool]] = []
    for stage in (1, 2):
        for ckpt in (False, True):
            plan.append(("ours", stage, ckpt))
            if stage == 1:  # TRL + Liger: its Triton layer kernels on a GPU, its fused DPO loss (torch) on a CPU
                peers = (["trl", "trl-liger-kernels"] if trl else []) if cuda else (["trl"] if trl else []) + ["trl-liger"]
            else:
                peers = ["povid"]
            plan += [(p, stage, ckpt) for p in peers]
    # Liger's RoPE patch is process-wide: the Liger rows run last
    plan.sort(key=lambda r: "liger" in r[0])
    fused = [f for f in args.fused if cuda or f != "liger"]
    plan += [(f"ours+{f}", stage, False) for f in fused for stage in (1, 2)]
    for provider, stage, ckpt in plan:
        name = f"{provider} stage {stage} ckpt {'on' if ckpt else 'off'}"
        if provider.startswith("ours"):
            fuse = provider.split("+", 1)[1] if "+" in provider else None
            fn = lambda stage=stage, ckpt=ckpt, fuse=fuse: run_ours(config, stage, ckpt, fuse, args, device, dtype)  # noqa: E731
        else:
            if workload is None:
                workload = synthetic_workload(config, pairs, args.prompt_text, args.response, 1, device, dtype)
                workload.processor = _peer_processor()
            fn = lambda provider=provider, stage=stage, ckpt=ckpt, w=workload: run_peer(provider, w, stage, ckpt, args, device)  # noqa: E731
        _record(rows, "training", name, finish(fn, stage, ckpt, provider))


def _peer_processor():
    _, processor = build_tiny_llava(TinyLlavaSpec(), ["a"])
    processor.tokenizer.pad_token_id = 0
    return processor


# ---------------------------------------------------------------- 3. syncs


def sync_check(device: torch.device) -> dict:
    """Host syncs per optimiser step of a tiny stage-2 run (2 micro-batches per step)."""
    config = _smoke_config()
    out = {}
    for stage in (1, 2):
        torch.manual_seed(0)
        with torch.device(device):
            model = flops.LlavaForConditionalGeneration(copy.deepcopy(config))
        policy = add_lora(model, r=8, alpha=16, dropout=0.0)
        batches = synthetic_batches(config, 12, 2, 8, 8)
        steps = 4
        cfg = LoopConfig(steps=steps, lr=1e-4, grad_accum=2, log_every=2, max_nonfinite_steps=steps)
        with tempfile.TemporaryDirectory() as tmp:
            warm = LoopConfig(steps=1, lr=1e-4, grad_accum=1, log_every=1)
            train_preference(policy, batches, PreferenceObjective(stage=stage), Reference("adapter"), warm, tmp, seed=0)
            if device.type == "cuda":
                with cuda_sync_warnings() as caught:
                    train_preference(policy, batches, PreferenceObjective(stage=stage), Reference("adapter"), cfg,
                                     tmp, seed=0)
                out[f"stage{stage}_syncs_per_step"] = len(caught) / steps
                out[f"stage{stage}_examples"] = sorted(set(caught))[:5]
            else:
                counter = SyncCounter()
                original = {(torch.optim.AdamW, "step"): torch.optim.AdamW.step,
                            (train_loop_module, "save_checkpoint"): train_loop_module.save_checkpoint}
                for (obj, attr), fn in original.items():
                    setattr(obj, attr, paused(counter, fn))
                import halluremedy.train.dpo as dpo

                original[(dpo, "load_micro_batch")] = dpo.load_micro_batch
                dpo.load_micro_batch = paused(counter, dpo.load_micro_batch)
                try:
                    with counter:
                        train_preference(policy, batches, PreferenceObjective(stage=stage), Reference("adapter"), cfg,
                                         tmp, seed=0)
                finally:
                    for (obj, attr), fn in original.items():
                        setattr(obj, attr, fn)
                out[f"stage{stage}_syncs_per_step"] = counter.total / steps
                out[f"stage{stage}_counts"] = dict(counter.counts)
        budget = 1 + 1 / 2  # the finiteness verdict every step, the metrics read every 2nd
        if out[f"stage{stage}_syncs_per_step"] > budget:
            raise AssertionError(f"stage {stage}: {out[f'stage{stage}_syncs_per_step']} syncs per step > {budget}: {out}")
    return out


# ---------------------------------------------------------------- main


def _smoke_config():
    config = flops.llava15_config("7b")
    config.vision_config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                                 "num_attention_heads": 2, "image_size": 56})
    config.text_config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32})
    config.image_seq_length = 16
    return config


def markdown(report: dict) -> str:
    lines = [f"# gpu_check: {report['device']}", "", f"torch {report['torch']}, triton {report['triton']}, "
             f"flash-attn {report['flash_attn']}, liger {report['liger']}, trl {report['trl']}; "
             f"{report['seconds']:.0f} s; smoke: {report['smoke']}", ""]
    checks = [r for r in report["rows"] if r["stage"] != "training"]
    lines += ["| stage | check | ok | s | details |", "| --- | --- | --- | ---: | --- |"]
    for r in checks:
        details = r.get("error") or ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in r.items() if k not in ("stage", "name", "ok", "seconds"))
        lines.append(f"| {r['stage']} | {r['name']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | {details} |")
    lines += ["", "| provider | stage | ckpt | samples/s | tokens/s | MFU (bound FLOPs) | peak GiB | backend | ok |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in report["rows"]:
        if r["stage"] != "training":
            continue
        if not r["ok"]:
            lines.append(f"| {r['name']} | | | | | | | | NO: {r['error'][:120]} |")
            continue
        mfu = f"{r['mfu_vs_bound']:.1%}" if r.get("mfu_vs_bound") else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") else "-"
        lines.append(f"| {r['provider']} | {r['training_stage']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
                     f"{r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {mfu} | {mem} | "
                     f"{', '.join(r['backend'])} | yes |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy size on the CPU (CI)")
    parser.add_argument("--out", help="JSON path (markdown beside it); default bench/gpu_check.json")
    parser.add_argument("--batch", type=int, default=16, help="preference pairs per optimiser step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps per row")
    parser.add_argument("--prompt-text", type=int, default=flops.PROMPT_TEXT)
    parser.add_argument("--response", type=int, default=flops.RESPONSE)
    parser.add_argument("--fused", nargs="*", default=["liger", "compile"], help="extra ours rows: liger, compile")
    parser.add_argument("--stages", nargs="+", default=["kernels", "exactness", "syncs", "training"])
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: run on a GPU, or use --smoke")
    device = torch.device("cuda" if cuda else "cpu")
    if args.smoke:
        args.batch, args.warmup, args.steps, args.prompt_text, args.response = 2, 1, 1, 8, 8
        args.fused = [f for f in args.fused if f != "compile"]  # minutes of CPU compilation
        config, dtype = _smoke_config(), torch.float32
    else:
        config, dtype = flops.llava15_config("7b"), torch.bfloat16
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp()) / "gpu_check.json" if args.smoke else
                                           Path(__file__).with_name("gpu_check.json"))
    t0 = time.perf_counter()
    rows: list[dict] = []
    if "kernels" in args.stages:
        _record(rows, "kernels", "vlm_kernels vs float64", lambda: kernel_checks(device))
    if "exactness" in args.stages:
        for backend in available_backends(device):
            for precision in ("fp32", "bf16"):
                _record(rows, "exactness", f"packed {backend} {precision}",
                        lambda b=backend, p=precision: packed_exactness(device, b, p))
    if "syncs" in args.stages:
        _record(rows, "syncs", "host syncs per optimiser step", lambda: sync_check(device))
    if "training" in args.stages:
        training(rows, config, args, device, dtype)
    versions = {}
    for name in ("triton", "flash-attn", "liger-kernel", "trl"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    report = {"device": torch.cuda.get_device_name(device) if cuda else f"cpu (smoke) {platform.machine()}",
              "smoke": args.smoke, "torch": torch.__version__, "triton": versions["triton"],
              "flash_attn": versions["flash-attn"], "liger": versions["liger-kernel"], "trl": versions["trl"],
              "seconds": time.perf_counter() - t0, "ok": all(r["ok"] for r in rows), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')} ({report['seconds']:.0f} s, ok={report['ok']})", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
