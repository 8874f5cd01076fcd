"""vlm_kernels: fused Triton ops for VLM preference training (standalone; never imports halluremedy).

Every op has a Triton path (CUDA tensors, or CPU under ``TRITON_INTERPRET=1``) and a plain-torch
path with the same signature, picked by ``impl="auto" | "triton" | "torch"``.
"""

# This folder is also importable as ``kernels`` whenever the repository root is on sys.path
# (``python -m pytest`` run from it), and transformers probes that name for Hugging Face's
# ``kernels`` package. Under that name the module stays empty: no torch or Triton import (Triton
# imported that early would also pin its interpreter mode), and transformers finds no version.
if __name__ == "vlm_kernels":
    from ._vocab import StreamConfig, TileConfig, default_stream_config
    from .diffusion_noise import diffusion_noise, povid_noise_schedule
    from .linear_argmax import linear_argmax
    from .linear_logprob import linear_logprob, linear_logprob_reference

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
