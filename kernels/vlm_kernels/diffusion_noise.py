"""Forward-diffusion noise fused with the CLIP mean/std normalisation, from a counter-based RNG.

    out[b, c] = (sqrt(abar[k_b]) * x0[b, c] + sqrt(1 - abar[k_b]) * eps[b, c] - mean[c]) / std[c]

with ``eps ~ N(0, 1)`` and ``abar`` the cumulative product of ``1 - beta`` of a DDPM schedule
(POVID: sigmoid betas from 1e-5 to 5e-3 over T = 1000 steps, k = 500). The Triton path reads each
pixel once and writes it once; its ``eps`` is Philox (``tl.randn``) at (seed, flat element index),
so the output is a pure function of the seed and the element, whatever the launch grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ._launch import launch, resolve_impl

_BLOCK = 1024
_NUM_WARPS = 4


def povid_noise_schedule(
    num_train_timesteps: int = 1000, beta_start: float = 1e-5, beta_end: float = 5e-3
) -> torch.Tensor:
    """``alphas_cumprod`` (T,) float32 of ``diffusers.DDPMScheduler(beta_schedule="sigmoid", ...)``.

    Computed the way diffusers does (float32 ``sigmoid(linspace(-6, 6, T))`` betas, then a
    cumulative product), so it equals the scheduler's tensor bit for bit without importing it.
    """
    betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    return torch.cumprod(1.0 - betas, dim=0)


_SCHEDULES = {"povid": povid_noise_schedule}


@triton.jit(do_not_specialize=["seed"])
def _diffusion_noise_kernel(images_ptr, out_ptr, coef_ptr, seed, numel, plane, BLOCK: tl.constexpr):
    """out[i] = scale[p] * x0[i] + noise[p] * eps(seed, i) + shift[p] for plane p = i // (H * W).

    coef (B * C, 3) fp32 holds, per (b, c) plane, scale = sqrt(abar)/std, noise = sqrt(1-abar)/std
    and shift = -mean/std.
    """
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    coef = coef_ptr + (offs // plane) * 3
    scale = tl.load(coef, mask=mask, other=0.0)
    noise = tl.load(coef + 1, mask=mask, other=0.0)
    shift = tl.load(coef + 2, mask=mask, other=0.0)
    x0 = tl.load(images_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    eps = tl.randn(seed, offs)
    out = scale * x0 + noise * eps + shift
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _triton_noise(images: torch.Tensor, coef: torch.Tensor, seed: int, out_dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(images.shape, dtype=out_dtype, device=images.device)
    numel = images.numel()
    launch(
        _diffusion_noise_kernel,
        (triton.cdiv(numel, _BLOCK),),
        num_warps=_NUM_WARPS,
        num_stages=1,
        images_ptr=images,
        out_ptr=out,
        coef_ptr=coef,
        seed=seed,
        numel=numel,
        plane=images.shape[2] * images.shape[3],
        BLOCK=_BLOCK,
    )
    return out


def _torch_noise(images: torch.Tensor, coef: torch.Tensor, seed: int, out_dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator(device=images.device).manual_seed(seed)
    eps = torch.randn(images.shape, generator=generator, dtype=torch.float32, device=images.device)
    return apply_noise(images, coef, eps).to(out_dtype)


def apply_noise(images: torch.Tensor, coef: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The fused formula for a given ``eps`` (B, C, H, W), in fp32, the kernel's order of operations."""
    scale, noise, shift = coef.view(*images.shape[:2], 3, 1, 1).unbind(2)  # each (B, C, 1, 1)
    return scale * images.float() + noise * eps + shift


def noise_coefficients(
    images: torch.Tensor,
    step: int | torch.Tensor,
    schedule: str | torch.Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> torch.Tensor:
    """Per (b, c) plane ``[sqrt(abar)/std, sqrt(1-abar)/std, -mean/std]``: (B * C, 3) float32."""
    batch, channels = images.shape[:2]
    alphas_cumprod = _SCHEDULES[schedule]() if isinstance(schedule, str) else schedule
    alphas_cumprod = alphas_cumprod.to(device=images.device, dtype=torch.float32)
    if isinstance(step, int):  # checked on the host: no device read
        if not 0 <= step < alphas_cumprod.numel():
            raise ValueError(f"step must lie in [0, {alphas_cumprod.numel()})")
        steps = torch.full((batch,), step, dtype=torch.long, device=images.device)  # (B,)
    else:
        steps = torch.as_tensor(step, device=images.device).long().expand(batch)  # (B,)
        if bool(((steps < 0) | (steps >= alphas_cumprod.numel())).any()):  # a host sync on a GPU
            raise ValueError(f"step must lie in [0, {alphas_cumprod.numel()})")
    abar = alphas_cumprod[steps][:, None]  # (B, 1)
    mean_t = torch.tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32, device=images.device)
    std_t = torch.tensor(std if std is not None else [1.0] * channels, dtype=torch.float32, device=images.device)
    if mean_t.shape != (channels,) or std_t.shape != (channels,):
        raise ValueError(f"mean and std need {channels} values each")
    coef = torch.stack(
        [abar.sqrt() / std_t, (1.0 - abar).sqrt() / std_t, (-mean_t / std_t).expand(batch, channels)], dim=-1
    )  # (B, C, 3)
    return coef.reshape(batch * channels, 3).contiguous()


def diffusion_noise(
    images01: torch.Tensor,
    step: int | torch.Tensor,
    *,
    seed: int,
    schedule: str | torch.Tensor = "povid",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    out_dtype: torch.dtype = torch.float32,
    impl: str = "auto",
) -> torch.Tensor:
    """Noise images to diffusion step ``step`` and normalise them, in one pass.

    ``out = (sqrt(abar_k) * x0 + sqrt(1 - abar_k) * eps - mean) / std`` per channel.

    Where the noise goes. POVID adds it to the [0, 1] image at its *original* resolution, before
    pad/resize and the CLIP normalisation. Both placements are available here:

    * POVID's: call with ``mean=None, std=None`` on the original-resolution [0, 1] image, then
      run the usual processor (pad, resize, normalise) on the result. Do not clamp or wrap it to
      uint8 (POVID's uint8 round trip wraps out-of-range values: a bug, not part of the method).
    * Fused (one read, one write): call on the processor's resized [0, 1] tensor with the CLIP
      ``mean``/``std``. Not identical: i.i.d. noise added *before* a downscaling resize is averaged
      by the resize filter (lower variance, spatially correlated), while here it stays white at the
      model's resolution, so at the same k the fused placement perturbs the encoder input more.

    Args:
        images01: (B, C, H, W) floating images with values in [0, 1].
        step: diffusion step k, an int or a (B,) integer tensor (one step per sample).
        seed: RNG seed; the output is a pure function of (seed, inputs).
        schedule: "povid" (see :func:`povid_noise_schedule`) or an ``alphas_cumprod`` (T,) tensor.
        mean, std: C per-channel normalisation constants; None means 0 / 1 (no normalisation).
        out_dtype: dtype of the result.
        impl: "auto" (Triton for CUDA tensors, torch otherwise), "triton" or "torch". The Triton
            path draws eps from Philox at (seed, flat element index); the torch path from a
            ``torch.Generator`` seeded with ``seed`` (a pure function of seed and shape). Both
            compute the same formula from different random streams.

    Returns:
        (B, C, H, W) tensor of ``out_dtype``.
    """
    if images01.dim() != 4 or not images01.dtype.is_floating_point:
        raise ValueError(f"expected floating images (B, C, H, W), got {images01.dtype} {tuple(images01.shape)}")
    if images01.numel() >= 2**31:
        raise ValueError("diffusion_noise supports fewer than 2**31 elements per call")
    images = images01.contiguous()
    coef = noise_coefficients(images, step, schedule, mean, std)
    if resolve_impl(impl, images) == "triton":
        return _triton_noise(images, coef, seed, out_dtype)
    return _torch_noise(images, coef, seed, out_dtype)
