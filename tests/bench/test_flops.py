"""The benchmark's compared steps and its meta-device FLOP model, at toy size on the CPU.

* every provider's step runs and computes the same loss as ours on the same pairs (equal work);
* the FLOP model's composed steps, in their CPU mode on a meta copy of the model, count exactly the
  FLOPs FlopCounterMode counts on the real steps (so at LLaVA geometry only the documented GPU
  switches differ);
* extrapolating counts from shallow copies (``LayerScaled``) equals a direct count.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import flops
from baselines import CONFIGS, PROVIDERS, build_workload

LOSS_TOL = 1e-4  # fp32; observed differences are ~1e-6


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return build_workload(replace(CONFIGS["tiny"], pairs=2), str(tmp_path_factory.mktemp("scenes")))


@pytest.fixture(scope="module")
def groups(workload):
    return [flops.Group(len(r.prompt), len(r.chosen), tuple(len(x) for x in r.rejected)) for r in workload.records]


@pytest.fixture(scope="module")
def meta_model(workload):
    return flops.meta_policy(workload.base_model.config, lora_r=workload.config.lora_r, lora_dropout=0.0)


@pytest.fixture(scope="module")
def ours_losses(workload):
    return {stage: float(PROVIDERS[f"ours-s{stage}"].make(workload)()) for stage in (1, 2)}


@pytest.mark.parametrize("provider", [name for name, p in PROVIDERS.items() if not p.cuda_only])
def test_step_runs_gives_ours_loss_and_flop_model_matches(provider, workload, groups, meta_model, ours_losses):
    if not PROVIDERS[provider].installed:
        pytest.skip("trl is a benchmark-only dependency: pip install -e '.[bench]'")
    spec = PROVIDERS[provider]
    step = spec.make(workload)
    loss = float(step())
    assert abs(loss - ours_losses[spec.stage]) <= LOSS_TOL, (provider, loss, ours_losses[spec.stage])
    assert any(p.grad is not None for n, p in step.model.named_parameters() if "lora_B" in n)
    assert abs(loss - 0.6931) > 1e-3, "random adapters should move the loss away from log 2"

    real = flops.count_flops(step)
    modelled = flops.count_step(meta_model, provider, groups, mode="cpu")
    assert modelled.flops == real, (provider, modelled.flops, real)
    # GPU mode drops only what the GPU paths skip: ours, the per-group SDPA blocks (varlen instead);
    # TRL, the LM head on non-completion rows. The others attend densely per row either way.
    gpu = flops.count_step(meta_model, provider, groups, mode="gpu")
    assert gpu.peak_bytes > 0
    assert gpu.flops < real if provider in ("ours-s1", "ours-s2", "trl") else gpu.flops == real


def test_flash_like_counts_like_sdpa():
    q, k, v = (torch.empty(2, 4, 24, 16, device="meta", requires_grad=True) for _ in range(3))
    with flops.meta_friendly(), flops.flop_counter() as fc:
        flops.FlashLike.apply(q, k, v).sum().backward()
    ours = fc.get_total_flops()
    q, k, v = (torch.randn(2, 4, 24, 16, requires_grad=True) for _ in range(3))
    with flops.flop_counter() as fc, torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    assert ours == fc.get_total_flops()


def test_layer_scaled_equals_direct_count(workload, groups):
    config = copy.deepcopy(workload.base_model.config)
    config.vision_config.num_hidden_layers, config.text_config.num_hidden_layers = 3, 4
    scaled = flops.LayerScaled(config, lora_r=8)
    direct = flops.meta_policy(config, lora_r=8)
    for provider in ("ours-s2", "trl-full"):
        a, b = scaled.count(provider, groups), flops.count_step(direct, provider, groups)
        assert a.flops == b.flops
        assert a.peak_bytes == pytest.approx(b.peak_bytes, rel=0.02)


def test_llava15_geometry():
    config = flops.llava15_config("7b")
    with torch.device("meta"):
        n_base = sum(p.numel() for p in flops.LlavaForConditionalGeneration(config).parameters())
    assert 7.0e9 < n_base < 7.1e9  # llava-1.5-7b-hf: 7.06B
    shallow = copy.deepcopy(config)
    shallow.vision_config.num_hidden_layers = shallow.text_config.num_hidden_layers = 1
    model = flops.meta_policy(shallow)
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert n_lora == 128 * (4 * (4096 + 4096) + 3 * (4096 + 11008))  # r=128 on q,k,v,o,gate,up,down
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    assert flops.llava_groups()[0] == flops.Group(626, 120, (120,))


def _odd_config(workload):
    """The tiny model's geometry, made odd: GQA, a head dim of its own, a 3-layer tower cut at -2."""
    config = copy.deepcopy(workload.base_model.config)
    config.text_config.update({"num_key_value_heads": 2, "head_dim": 24, "intermediate_size": 200})
    config.vision_config.num_hidden_layers = 3
    return config


@pytest.mark.parametrize("stage", [1, 2])
def test_ours_is_the_hand_counted_bound_plus_the_head_recompute(stage, workload):
    """The composed step (shared tower features, tower cut at the feature layer) counts exactly the
    bound's FLOPs plus the one thing the bound leaves out: linear_logprob's recomputed logits."""
    config = _odd_config(workload)
    model = flops.meta_policy(config, lora_r=8)
    groups = [flops.Group(21, 5, (3,)), flops.Group(19, 4, (6, 2)), flops.Group(17, 7, (1,))]
    counted = flops.count_step(model, f"ours-s{stage}", groups, mode="gpu").flops
    assert counted == flops.bound_flops(config, groups, stage, lora_r=8) + flops.head_recompute_flops(config, groups)


def test_llava15_7b_within_half_a_percent_of_the_bound():
    config = flops.llava15_config("7b")
    model = flops.LayerScaled(config)
    groups = flops.llava_groups()
    for stage in (1, 2):
        ours = model.count(f"ours-s{stage}", groups).flops
        bound = flops.bound_flops(config, groups, stage)
        assert bound <= ours <= 1.005 * bound, (stage, ours / bound)


def test_data_parallel_figures_split_the_bound_and_send_nothing_alone():
    eight, one = flops.data_parallel(gpus=8, global_pairs=16), flops.data_parallel(gpus=1, global_pairs=16)
    config, groups = flops.llava15_config("7b"), flops.llava_groups()
    for r8, r1 in zip(eight, one):
        bound = flops.bound_flops(config, groups, r8["stage"]) / flops.num_pairs(groups) * 16
        assert r8["tflop_per_gpu"] * 8 == pytest.approx(bound / 1e12) == pytest.approx(r1["tflop_per_gpu"])
        assert r1["gb_sent_per_gpu"] == 0 and r8["gb_sent_per_gpu"] > 0
    ddp, fsdp = eight[0], eight[1]
    assert fsdp["gb_state_per_gpu"] * 8 == pytest.approx(one[1]["gb_state_per_gpu"])  # FSDP2 shards the state
    assert ddp["gb_state_per_gpu"] == pytest.approx(one[0]["gb_state_per_gpu"])  # DDP replicates it
