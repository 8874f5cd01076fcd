"""GPU throughput of the preference step at LLaVA-1.5-7B shape (random weights), recorded to the history.

Only where CUDA exists. Builds ``LlavaForConditionalGeneration`` from the LLaVA-1.5-7B (or 13B)
config (``bench/flops.py``) with random bf16 weights on the GPU, LoRA r=128 on the decoder, and a
synthetic batch of ``--pairs`` records: 576 image placeholders + ``--prompt-text`` prompt tokens,
answers of ``--response`` tokens, random ids and pixels. Each provider (``bench/baselines``:
ours stage 1 / 2, TRL DPOTrainer, TRL-style + Liger, TRL-style full logits, POVID-style) then runs
``--warmup`` + ``--steps`` steps (forward + backward) on its own copy of the policy; per provider:

* ``time_per_pair_ms``: median step time (CUDA-synchronised) / pairs;
* ``samples_per_s``: preference pairs per second; ``tokens_per_s``: the pairs' distinct tokens
  (prompt + chosen + rejected, what every provider must read) per second;
* ``mfu``: the provider's own step FLOPs (``bench/flops.py``'s count, forward + backward, no
  recomputation) / time / the GPU's dense bf16 peak (table below; None if the GPU is unknown);
* ``peak_mem_mb``: ``torch.cuda.max_memory_allocated`` during one step minus the memory allocated
  before it (weights and the other copies excluded).

Each result is appended to ``bench/history.jsonl`` (``kind: "gpu-throughput"``, with the device
name), where ``bench/compare.py`` shows it. Losses of the providers of a stage are compared
(bf16: |diff| <= 2e-2 reported, not asserted).

    python bench/gpu_throughput.py [--size 7b] [--pairs 2] [--providers ours-s1 trl ...]
    python bench/gpu_throughput.py --smoke     # tiny geometry on the CPU: exercises the script, records nothing
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flops  # noqa: E402
from baselines import PROVIDERS  # noqa: E402
from baselines.workload import BenchConfig, Workload, _random_adapters  # noqa: E402
from compare import HISTORY, git_commit  # noqa: E402

from halluremedy.models.llava import TinyLlavaSpec  # noqa: E402
from halluremedy.train.dpo import EncodedRecord, PreferenceBatches  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"A100": 312e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "A800": 312e12,
             "L40S": 362e12, "L4": 121e12, "A10": 125e12, "RTX 4090": 165e12, "B200": 2250e12}


def peak_flops(device_name: str) -> float | None:
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16[key]
    return None


def synthetic_workload(config, pairs: int, prompt_text: int, response: int, rejected: int, device: str,
                       dtype: torch.dtype, seed: int = 0) -> Workload:
    """Random weights, random ids and pixels, in the benchmark's Workload shape."""
    torch.manual_seed(seed)
    with torch.device(device):
        base = flops.LlavaForConditionalGeneration(copy.deepcopy(config)).to(dtype)
    base.train()
    image_id = config.image_token_index
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, image_id, (n,), generator=g).tolist()

    records = [EncodedRecord(f"{i}.png", [1] + [image_id] * config.image_seq_length + ids(prompt_text - 1),
                             ids(response - 1) + [2], [ids(response - 1) + [2] for _ in range(rejected)])
               for i in range(pairs)]
    # PreferenceBatches.make_batch needs only the encoded records and the placeholder id.
    batches = PreferenceBatches.__new__(PreferenceBatches)
    batches.encoded, batches.image_token_id = records, image_id
    batch = batches.make_batch(list(range(pairs)))
    size = config.vision_config.image_size
    clean = torch.randn(pairs, 3, size, size, generator=g).to(device, dtype)
    noised = torch.randn(pairs, 3, size, size, generator=g).to(device, dtype)
    spec = TinyLlavaSpec(image_size=size, patch_size=config.vision_config.patch_size)
    bench = BenchConfig(f"llava-1.5 shape ({config.text_config.num_hidden_layers} layers, random weights)", spec,
                        pairs=pairs, lora_r=128, rounds=0)
    processor = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0))
    workload = Workload(bench, base, {}, processor, batches, batch, clean, clean, noised)
    state = _random_adapters(workload, seed, std=0.01)
    workload.lora_state = {k: v.to(device, torch.float32) for k, v in state.items()}
    return workload


def _tiny_processor(pad_token_id: int):
    """TRL's DPOTrainer wants a processor at construction; the steps feed it ids directly."""
    from halluremedy.models.llava import build_tiny_llava

    _, processor = build_tiny_llava(TinyLlavaSpec(), ["a"])
    processor.tokenizer.pad_token_id = pad_token_id
    return processor


def measure(make, workload: Workload, warmup: int, steps: int, cuda: bool) -> dict:
    step = make(workload)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        loss = step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = None
    if cuda:
        gc.collect()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    del step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"seconds": statistics.median(times), "loss": float(loss), "peak_mem_mb": peak}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="7b", choices=["7b", "13b"])
    parser.add_argument("--pairs", type=int, default=1, help="pairs per step (POVID: 1 per device)")
    parser.add_argument("--prompt-text", type=int, default=flops.PROMPT_TEXT)
    parser.add_argument("--response", type=int, default=flops.RESPONSE)
    parser.add_argument("--rejected", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS))
    parser.add_argument("--smoke", action="store_true", help="tiny geometry on the CPU, nothing recorded")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: this benchmark runs on a GPU (use --smoke to exercise it on the CPU)")
    config = flops.llava15_config(args.size)
    if args.smoke:  # a 2-layer, narrow LLaVA with the real vision/text structure
        config.vision_config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                     "num_attention_heads": 2, "image_size": 56})
        config.text_config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                   "num_attention_heads": 2, "num_key_value_heads": 2})
        config.image_seq_length = 16
        args = replace_args(args, warmup=0, steps=1, prompt_text=8, response=8)
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    workload = synthetic_workload(config, args.pairs, args.prompt_text, args.response, args.rejected, device, dtype)
    if args.rejected != 1:
        args.providers = [p for p in args.providers if p.startswith("ours")]  # the peers take pairs only
    device_name = torch.cuda.get_device_name() if cuda else "cpu (smoke)"
    peak = peak_flops(device_name) if cuda else None
    groups = [flops.Group(len(r.prompt), len(r.chosen), tuple(len(x) for x in r.rejected)) for r in workload.records]
    scaled = flops.LayerScaled(config, lora_r=128, lora_dropout=0.0)
    tokens = sum(g.prompt + g.chosen + sum(g.rejected) for g in groups)
    pairs = flops.num_pairs(groups)
    commit, date = git_commit(), datetime.now(timezone.utc).isoformat(timespec="seconds")

    results = []
    for name in args.providers:
        provider = PROVIDERS[name]
        if provider.needs_trl:
            workload.processor = _tiny_processor(0)
        if provider.cuda_only and not cuda:
            continue
        try:
            m = measure(provider.make, workload, args.warmup, args.steps, cuda)
        except Exception as e:  # one provider failing (e.g. out of memory) must not lose the others
            print(f"{name}: failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
            if cuda:
                torch.cuda.empty_cache()
            continue
        flop_count = scaled.count(provider.flops_as or name, groups).flops
        row = {"kind": "gpu-throughput", "date": date, "commit": commit, "device": device_name,
               "config": f"llava-1.5-{args.size} (random weights)", "provider": name, "stage": provider.stage,
               "pairs": pairs, "tokens_per_pair": tokens / pairs, "time_per_pair_ms": 1e3 * m["seconds"] / pairs,
               "samples_per_s": pairs / m["seconds"], "tokens_per_s": tokens / m["seconds"],
               "flops_per_pair": flop_count / pairs, "mfu": flop_count / m["seconds"] / peak if peak else None,
               "peak_mem_mb": m["peak_mem_mb"], "loss": m["loss"]}
        results.append(row)
        print(json.dumps(row))
    for stage in (1, 2):
        losses = {r["provider"]: r["loss"] for r in results if r["stage"] == stage}
        if len(losses) > 1 and max(losses.values()) - min(losses.values()) > 2e-2:
            print(f"warning: stage-{stage} losses differ by more than 2e-2 (bf16): {losses}", file=sys.stderr)
    if cuda and results:
        with HISTORY.open("a") as f:
            for row in results:
                f.write(json.dumps(row) + "\n")
        print(f"appended {len(results)} rows to {HISTORY}", file=sys.stderr)


def replace_args(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


if __name__ == "__main__":
    main()
