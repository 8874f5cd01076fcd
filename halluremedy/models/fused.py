"""Fused decoder layers for CUDA: Liger-Kernel's RMSNorm / SwiGLU / RoPE, and ``torch.compile``.

Both are options (``bench/gpu_check.py`` measures them against the plain decoder); neither changes the
packed forward's structure. Liger's kernels are Triton and need a GPU; its RoPE patch replaces
``transformers.models.llama.modeling_llama.apply_rotary_pos_emb`` for the whole process (that is how
Liger applies it), its RMSNorm and SwiGLU patch this model's modules in place. The LoRA adapters stay
on ``gate_proj`` / ``up_proj`` / ``down_proj``: Liger's SwiGLU module calls those (adapted) linears.
"""

from __future__ import annotations

from torch import nn
from transformers import LlavaForConditionalGeneration


def language_model(model: nn.Module) -> nn.Module:
    """The decoder (``LlamaModel``) inside ``model``, through any wrapper (peft, DDP...)."""
    for module in model.modules():
        if isinstance(module, LlavaForConditionalGeneration):
            return module.model.language_model
    raise TypeError(f"no LlavaForConditionalGeneration inside {type(model).__name__}")


def apply_liger(model: nn.Module) -> nn.Module:
    """Liger's RMSNorm, SwiGLU MLP and RoPE on the decoder (no loss patch: our head is ``linear_logprob``)."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    decoder = language_model(model)
    if next(decoder.parameters()).device.type != "cuda":
        raise RuntimeError("Liger's kernels are Triton kernels: they need the decoder on a CUDA device")
    if decoder.config.model_type != "llama":
        raise TypeError(f"apply_liger knows Llama decoders, not {decoder.config.model_type!r}")
    apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False, model=decoder)
    return model


def compile_decoder(model: nn.Module, dynamic: bool = True) -> nn.Module:
    """``torch.compile`` each decoder layer in place (packs change length every step: ``dynamic``)."""
    for layer in language_model(model).layers:
        layer.compile(dynamic=dynamic)
    return model
