"""Batched answer generation (KV-cached ``generate``), greedy or sampled, reproducible from a seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from halluremedy.prompts import llava_prompt


@dataclass(frozen=True)
class Decoding:
    """How to decode. ``temperature == 0`` means greedy; otherwise sampling at that temperature."""

    temperature: float = 0.0
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and self.temperature != float("inf")) or self.max_new_tokens < 1:
            raise ValueError(f"Decoding needs a finite temperature >= 0 and max_new_tokens >= 1, got {self}")

    @property
    def name(self) -> str:
        return "greedy" if self.temperature == 0 else f"sampled(T={self.temperature:g},seed={self.seed})"


@torch.no_grad()
def generate_answers(model: LlavaForConditionalGeneration, processor: LlavaProcessor, images: Sequence[Image.Image],
                     questions: Sequence[str], decoding: Decoding, *, batch_size: int = 64,
                     progress: str | None = None) -> list[str]:
    """Answer ``questions[i]`` about ``images[i]``; returns decoded answers (special tokens removed).

    Sampling draws from a generator forked from ``decoding.seed`` and the batch index, so results do
    not depend on the global RNG state or on what ran before.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    model.eval()
    device = model.device
    answers: list[str] = []
    starts = range(0, len(questions), batch_size)
    for b, start in enumerate(tqdm(starts, desc=progress, disable=progress is None, leave=False)):
        batch_q = [llava_prompt(q) for q in questions[start:start + batch_size]]
        inputs = processor(text=batch_q, images=list(images[start:start + batch_size]), return_tensors="pt",
                           padding=True).to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        sample = decoding.temperature > 0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(decoding.seed * 1_000_003 + b)
            out = model.generate(**inputs, do_sample=sample, temperature=decoding.temperature if sample else None,
                                 top_p=None, top_k=None, max_new_tokens=decoding.max_new_tokens,
                                 pad_token_id=processor.tokenizer.pad_token_id)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        answers += [a.strip() for a in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers
