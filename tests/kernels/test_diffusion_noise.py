"""diffusion_noise: the schedule is diffusers', the formula is exact, the noise is seeded N(0, 1)."""

from __future__ import annotations

import pytest
import torch
from vlm_kernels import diffusion_noise, povid_noise_schedule
from vlm_kernels.diffusion_noise import apply_noise, noise_coefficients

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
STEPS = torch.tensor([500, 900])


def images(b: int = 2, h: int = 17, w: int = 19) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_schedule_is_diffusers_ddpm_sigmoid():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="sigmoid", beta_start=1e-5, beta_end=5e-3)
    assert torch.equal(povid_noise_schedule(), scheduler.alphas_cumprod)
    abar = povid_noise_schedule()[500]
    assert abs(abar.sqrt() - 0.863) < 1e-3 and abs((1 - abar).sqrt() - 0.505) < 1e-3


def test_formula_is_diffusers_add_noise_then_normalise():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="sigmoid", beta_start=1e-5, beta_end=5e-3)
    x0 = images()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    want = (scheduler.add_noise(x0, eps, STEPS) - mean) / std
    got = apply_noise(x0, noise_coefficients(x0, STEPS, "povid", CLIP_MEAN, CLIP_STD), eps)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def check_deterministic_per_seed(impl: str) -> None:
    x0 = images()
    first = diffusion_noise(x0, STEPS, seed=3, mean=CLIP_MEAN, std=CLIP_STD, impl=impl)
    assert torch.equal(first, diffusion_noise(x0, STEPS, seed=3, mean=CLIP_MEAN, std=CLIP_STD, impl=impl))
    other = diffusion_noise(x0, STEPS, seed=4, mean=CLIP_MEAN, std=CLIP_STD, impl=impl)
    assert (first != other).float().mean() > 0.99
    half = diffusion_noise(x0, STEPS, seed=3, mean=CLIP_MEAN, std=CLIP_STD, out_dtype=torch.bfloat16, impl=impl)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), first, atol=0.05, rtol=0.01)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_deterministic_per_seed(interpreted, impl: str):
    interpreted(check_deterministic_per_seed, impl)


def check_closed_form_statistics(impl: str) -> None:
    """Constant x0: per (sample, channel) mean and variance match the closed form within 5 sigma."""
    x0 = torch.full((2, 3, 64, 64), 0.5)
    out = diffusion_noise(x0, STEPS, seed=11, mean=CLIP_MEAN, std=CLIP_STD, impl=impl).double()
    abar = povid_noise_schedule().double()[STEPS][:, None]  # (B, 1)
    mean, std = torch.tensor(CLIP_MEAN).double(), torch.tensor(CLIP_STD).double()
    want_mean = (abar.sqrt() * 0.5 - mean) / std  # (B, C)
    want_var = (1 - abar) / std**2
    n = 64 * 64
    got_mean, got_var = out.mean((2, 3)), out.var((2, 3))
    assert ((got_mean - want_mean).abs() <= 5 * (want_var / n).sqrt()).all(), (got_mean, want_mean)
    assert ((got_var / want_var - 1).abs() <= 5 * (2 / n) ** 0.5).all(), (got_var, want_var)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_closed_form_statistics(interpreted, impl: str):
    interpreted(check_closed_form_statistics, impl)


def check_triton_formula_is_exact() -> None:
    """x0 = 0, mean 0, std 1 reveals the kernel's sqrt(1 - abar) * eps; the full call is the formula on that eps."""
    x0 = images()
    revealed = diffusion_noise(torch.zeros_like(x0), STEPS, seed=5, impl="triton")
    eps = revealed / noise_coefficients(x0, STEPS, "povid", None, None)[:, 1].view(2, 3, 1, 1)
    got = diffusion_noise(x0, STEPS, seed=5, mean=CLIP_MEAN, std=CLIP_STD, impl="triton")
    want = apply_noise(x0, noise_coefficients(x0, STEPS, "povid", CLIP_MEAN, CLIP_STD), eps)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    # Philox at (seed, flat index): the first sample's noise does not depend on the batch around it.
    alone = diffusion_noise(x0[:1], STEPS[:1], seed=5, mean=CLIP_MEAN, std=CLIP_STD, impl="triton")
    assert torch.equal(alone, got[:1])


def test_triton_formula_is_exact(interpreted):
    interpreted(check_triton_formula_is_exact)


def test_scalar_step_and_custom_schedule():
    x0 = images()
    schedule = torch.linspace(0.99, 0.01, 10)
    out = diffusion_noise(x0, 3, seed=0, schedule=schedule, impl="torch")
    per_sample = diffusion_noise(x0, torch.tensor([3, 3]), seed=0, schedule=schedule, impl="torch")
    assert torch.equal(out, per_sample)
    with pytest.raises(ValueError, match="step"):
        diffusion_noise(x0, 10, seed=0, schedule=schedule)
    with pytest.raises(ValueError, match="mean and std"):
        diffusion_noise(x0, 3, seed=0, mean=(0.5, 0.5), std=(1.0, 1.0))
