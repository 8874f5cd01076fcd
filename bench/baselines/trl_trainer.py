"""TRL's own ``DPOTrainer`` step (``pip install -e ".[bench]"``; TRL is a benchmark-only dependency).

The trainer gets a copy of the base model and the workload's ``LoraConfig`` (TRL wraps it with
fresh adapters; ``ref_model=None``, so TRL's reference is the policy with its adapters disabled, as
in POVID and ours), then the workload's adapter weights are copied in: a mid-training step. (Handing
TRL an already-wrapped PeftModel instead would make it add a frozen copy of the adapters, "ref",
as the reference: another objective.) One step is
``trainer.training_step(model, inputs)``: TRL's ``compute_loss`` (policy forward with grad, reference
forward without, sigmoid DPO, TRL's metrics bookkeeping) and ``accelerator.backward``. The inputs
are the collator's output layout (:func:`trl_style.trl_layout`) built from the same token ids, so
tokenisation is not part of the comparison.

TRL 1.16 scores completions with its fused chunked log-prob head (``add_fused_lm_head``): no
``(2B, T, V)`` logits; on CUDA only completion positions are scored (Triton fold), elsewhere -- this
CPU -- every position of the padded batch, in torch tiles.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable

import torch

from .trl_style import trl_layout
from .workload import BETA, Workload


def make_trl_trainer(workload: Workload, liger_kernels: bool = False) -> Callable[[], torch.Tensor]:
    """``liger_kernels``: ``DPOConfig(use_liger_kernel=True)``, whose Liger layer kernels (RMSNorm, SwiGLU,
    RoPE; Triton, so CUDA only) ``Trainer`` patches in when ``train()`` starts: done here by hand, since
    the benchmark calls ``training_step`` directly. TRL keeps its own LM head either way."""
    from datasets import Dataset
    from PIL import Image
    from trl import DPOConfig, DPOTrainer

    size = workload.config.spec.image_size
    # DPOTrainer wants a dataset at construction; the benchmark never iterates it.
    dataset = Dataset.from_dict({"prompt": ["USER: <image>\nDescribe this image. ASSISTANT:"], "chosen": [" yes."],
                                 "rejected": [" no."], "images": [[Image.new("RGB", (size, size))]]})
    param = next(workload.base_model.parameters())
    # TRL defaults to gradient checkpointing; off here, as for every provider (no recomputation).
    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix="halluremedy-bench-trl-"), beta=BETA, loss_type=["sigmoid"],
                     per_device_train_batch_size=workload.config.pairs, max_length=None,
                     use_cpu=param.device.type == "cpu", bf16=param.dtype == torch.bfloat16, fp16=False,
                     report_to=[], disable_dropout=True, gradient_checkpointing=False, use_liger_kernel=liger_kernels)
    trainer = DPOTrainer(model=copy.deepcopy(workload.base_model), ref_model=None, args=args, train_dataset=dataset,
                         processing_class=workload.processor, peft_config=workload.lora_config())
    workload.load_adapters(trainer.model)
    if liger_kernels:
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(trainer.model, args.liger_kernel_config)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which the benchmark bypasses
    inputs = trl_layout(workload.records, workload.clean, workload.pad_token_id).model_inputs()

    def step() -> torch.Tensor:
        trainer.model.zero_grad(set_to_none=True)
        return trainer.training_step(trainer.model, dict(inputs))

    step.model = trainer.model
    step.trainer = trainer
    return step
