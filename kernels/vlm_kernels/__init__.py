"""vlm_kernels: fused Triton ops for VLM preference training (standalone; never imports halluremedy).

Every op has a Triton path (CUDA tensors, or CPU under ``TRITON_INTERPRET=1``) and a plain-torch
path with the same signature, picked by ``impl="auto" | "triton" | "torch"``.
"""

from ._vocab import StreamConfig, TileConfig, default_stream_config
from .diffusion_noise import diffusion_noise, povid_noise_schedule
from .linear_argmax import linear_argmax
from .linear_logprob import linear_logprob, linear_logprob_reference

__version__ = "0.1.0"

__all__ = [
    "StreamConfig",
    "TileConfig",
    "default_stream_config",
    "diffusion_noise",
    "linear_argmax",
    "linear_logprob",
    "linear_logprob_reference",
    "povid_noise_schedule",
]
