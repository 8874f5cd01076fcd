"""LoRA adapters on the decoder's linear layers (peft), POVID's placement: not the vision tower,
projector or LM head."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model

DECODER_LINEARS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def add_lora(model: torch.nn.Module, r: int = 128, alpha: int = 256, dropout: float = 0.05,
             target_modules: str = DECODER_LINEARS) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters (B = 0, so the wrapped model computes the same function)."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    return get_peft_model(model, config)


def merge_lora(model: PeftModel) -> torch.nn.Module:
    """Fold the adapters into the base weights and return the plain model."""
    return model.merge_and_unload()
