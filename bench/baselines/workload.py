"""The benchmark workload: scene-world preference pairs through a tiny LLaVA with LoRA, on the CPU.

Every provider gets the same thing: ``pairs`` POVID records (prompt + image, chosen y+, one
rejected y-) from the procedural scene world, encoded once by :class:`ConversationEncoder`, their
clean and noised pixel tensors (the noise of ``halluremedy.train.povid.noised_images``, so POVID's
noised forward sees the same image as ours), and its own deep copy of one policy: a tiny LLaVA
with LoRA adapters on every decoder linear layer (POVID's placement), reference = adapters disabled.

The adapters' B matrices are drawn at random instead of zero so that policy != reference: at the
usual zero init every margin is 0 and every loss is log 2 whatever the log-probs are, which would
make the equal-loss check between providers vacuous. LoRA dropout is 0 (POVID uses 0.05) so that
every provider computes the same deterministic loss; fp32 throughout.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model

from halluremedy.data.conversation import ConversationEncoder
from halluremedy.data.images import ImageBank
from halluremedy.generate.injector import RuleBasedEditor
from halluremedy.generate.pairs import build_preference_pairs
from halluremedy.models.llava import TinyLlavaSpec, build_tiny_llava, image_seq_length
from halluremedy.models.lora import DECODER_LINEARS
from halluremedy.pipeline import SceneDataSpec, ensure_scene_data, scene_model_texts
from halluremedy.train.dpo import EncodedRecord, PreferenceBatch, PreferenceBatches
from halluremedy.train.povid import noised_images

BETA = 0.1
NOISE_STEP = 500


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark geometry: the model, how many preference pairs a step holds, the LoRA rank."""

    name: str
    spec: TinyLlavaSpec
    pairs: int
    lora_r: int
    rounds: int  # timed pytest-benchmark rounds per provider (after one warm-up round)
    seed: int = 0

    def describe(self) -> str:
        s = self.spec
        return (f"{self.name}: {self.pairs} pairs/step, {s.image_tokens} image tokens ({s.image_size}px/{s.patch_size}), "
                f"vision {s.vision_layers}x{s.vision_hidden}, decoder {s.text_layers}x{s.text_hidden} "
                f"(MLP {s.text_intermediate}), LoRA r={self.lora_r}, fp32 CPU")


CONFIGS: dict[str, BenchConfig] = {
    # The scene world's own model (tests/recipes use it): 16 image tokens, ~1M parameters.
    "tiny": BenchConfig("tiny", TinyLlavaSpec(), pairs=8, lora_r=16, rounds=5),
    # LLaVA-shaped but CPU-sized: the image prefix dominates the sequence as it does in LLaVA-1.5
    # (144 image tokens + ~10 prompt tokens vs ~15-token answers; LLaVA: 576 + ~50 vs ~120).
    "large": BenchConfig("large", TinyLlavaSpec(image_size=96, patch_size=8, vision_hidden=256, vision_layers=4,
                                                vision_heads=8, text_hidden=512, text_layers=4, text_heads=8,
                                                text_intermediate=1376, max_positions=512),
                         pairs=4, lora_r=64, rounds=3),
}


@dataclass
class Workload:
    """One benchmark batch and a fresh policy per provider (see the module docstring)."""

    config: BenchConfig
    base_model: torch.nn.Module  # the plain LlavaForConditionalGeneration, no adapters
    lora_state: dict[str, torch.Tensor]  # the adapters' weights, by PeftModel parameter name
    processor: object
    batches: PreferenceBatches
    batch: PreferenceBatch
    images01: torch.Tensor  # (B, C, H, W) in [0, 1]
    clean: torch.Tensor  # (B, C, H, W) CLIP-normalised
    noised: torch.Tensor  # (B, C, H, W) noised (POVID stage 2) and normalised

    @property
    def records(self) -> list[EncodedRecord]:
        return [self.batches.encoded[r] for r in self.batch.records]

    @property
    def pad_token_id(self) -> int:
        return int(self.processor.tokenizer.pad_token_id)

    def lora_config(self) -> LoraConfig:
        """The adapters' configuration (``halluremedy.models.lora.add_lora``'s, dropout 0)."""
        r = self.config.lora_r
        return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=DECODER_LINEARS, bias="none")

    def load_adapters(self, model: torch.nn.Module) -> torch.nn.Module:
        """Copy the workload's adapter weights into ``model`` (a PeftModel with the same adapters)."""
        params = dict(model.named_parameters())
        if set(self.lora_state) - set(params):
            raise KeyError(f"adapters missing from the model: {sorted(set(self.lora_state) - set(params))[:3]}")
        with torch.no_grad():
            for name, value in self.lora_state.items():
                params[name].copy_(value)
        return model

    def fresh_policy(self) -> torch.nn.Module:
        """A new PeftModel over a deep copy of the base model, with the workload's adapters.

        Each provider gets its own (they patch or switch their model; none may see another's).
        """
        return self.load_adapters(get_peft_model(copy.deepcopy(self.base_model), self.lora_config()))


def _random_adapters(workload: Workload, seed: int, std: float = 0.1) -> dict[str, torch.Tensor]:
    """Adapter weights as after some training: A as peft initialises it, B drawn N(0, std^2)."""
    torch.manual_seed(seed)
    policy = get_peft_model(copy.deepcopy(workload.base_model), workload.lora_config())
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in policy.named_parameters():
        if "lora_" in name:
            state[name] = torch.randn(p.shape, generator=g) * std if "lora_B" in name else p.detach().clone()
    return state


def build_workload(config: BenchConfig, data_root: str | None = None) -> Workload:
    """Scene data (generated into ``data_root`` or a temporary folder), pairs, model, one batch."""
    spec = config.spec
    root = data_root or tempfile.mkdtemp(prefix="halluremedy-bench-")
    n_images = 8 * config.pairs
    train, _ = ensure_scene_data(root, SceneDataSpec(n_train=n_images, n_heldout=1, image_size=spec.image_size))
    records = build_preference_pairs(train, RuleBasedEditor.for_dataset(train), seed=config.seed)
    records = [r for r in records if len(r.rejected) == 1][: 4 * config.pairs]
    if len(records) < config.pairs:
        raise RuntimeError(f"only {len(records)} scene pairs for a {config.pairs}-pair batch")
    torch.manual_seed(config.seed)
    model, processor = build_tiny_llava(spec, scene_model_texts(), seed=config.seed)
    encoder = ConversationEncoder(processor.tokenizer, image_seq_length(model), max_length=spec.max_positions)
    bank = ImageBank(train, processor.image_processor)
    batches = PreferenceBatches(records, encoder, bank, config.pairs, seed=config.seed)
    batch = batches.batch(0)
    images01 = bank.get01(batch.files)
    clean = bank.normalize(images01)
    noised = noised_images(bank, images01, batch.records, seed=config.seed, epoch=0, step=NOISE_STEP)
    workload = Workload(config, model, {}, processor, batches, batch, images01, clean, noised)
    workload.lora_state = _random_adapters(workload, config.seed)
    return workload
