"""Build, save and load LLaVA-1.5-style models: the tiny scene-world model and real checkpoints alike.

The tiny model is a genuine ``LlavaForConditionalGeneration`` (CLIP vision tower + 2-layer GELU
projector + Llama decoder) built from config, with a word-level tokenizer and a CLIP image
processor, saved as config + safetensors + tokenizer + processor. ``load_model`` therefore takes
``/path/to/llava-1.5-7b-hf`` and a tiny directory through the same code path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from halluremedy.models.tokenizer import build_word_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Geometry of a tiny LLaVA. Defaults: 32-px images, 8-px patches -> 16 image tokens, ~1M params."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate: int = 256
    max_positions: int = 256

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_tiny_llava(spec: TinyLlavaSpec, texts: Iterable[str], seed: int = 0
                     ) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A randomly initialised tiny LLaVA whose tokenizer covers every word of ``texts``."""
    tokenizer = build_word_tokenizer(texts)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size}, crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    # num_additional_image_tokens=1 + strategy "default" (drop CLS): the llava-1.5-hf convention.
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=4 * spec.vision_hidden,
                              num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                              image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.text_hidden,
                       intermediate_size=spec.text_intermediate, num_hidden_layers=spec.text_layers,
                       num_attention_heads=spec.text_heads, num_key_value_heads=spec.text_heads,
                       max_position_embeddings=spec.max_positions, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id,
                         image_seq_length=spec.image_tokens, vision_feature_select_strategy="default",
                         vision_feature_layer=-2)
    config.pad_token_id = tokenizer.pad_token_id
    config.tiny_spec = asdict(spec)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor


def save_model(model: LlavaForConditionalGeneration, processor: LlavaProcessor, path: str | os.PathLike,
               state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Save in the Hugging Face layout (config + safetensors + tokenizer + processor), atomically.

    The directory is written beside its final place and renamed over it, so a crash leaves either
    the old checkpoint or the new one, never half of one. ``state_dict``: the weights to write
    instead of the model's own (a sharded model's gathered full state).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    processor.save_pretrained(tmp)
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def load_model(path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
               attn_implementation: str = "sdpa") -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Load a LLaVA checkpoint directory (tiny or llava-1.5-*-hf) and its processor, from local disk only."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json); halluremedy never downloads models")
    if dtype is None:
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                          attn_implementation=attn_implementation)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    return model.to(device), processor


def image_seq_length(model: LlavaForConditionalGeneration) -> int:
    """Number of ``<image>`` placeholder tokens one image expands to (576 for LLaVA-1.5)."""
    return int(model.config.image_seq_length)
