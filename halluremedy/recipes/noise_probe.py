"""What does POVID's noise-triggered term push down? A probe of the dispreferred tokens it would use
(``scripts/noise_argmax_probe.py``).

Teacher-forced on reference captions, compares at every response position the argmax under the
clean image, the argmax under the diffusion-noised image (POVID's dispreferred token ``a_t``) and
the reference token, separately for object words (any class synonym) and the other words; counts how
many of the noised tokens that differ from the reference occur elsewhere in the same caption (a
reordering, not a new word: what ``--noise-positions novel`` cancels); lists the object words the
noised image makes the model predict instead of the reference one.

    python scripts/noise_argmax_probe.py --model halluremedy/assets/scene_base --data runs/scenes
    python scripts/noise_argmax_probe.py --model M --data D --steps 300 500 --images 300

Writes ``--out`` (JSON) and prints one line per noise step.
"""

from __future__ import annotations

import collections
import json
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm
from vlm_kernels import diffusion_noise

from halluremedy.config import check, check_model_dir, check_range, option, required
from halluremedy.data.coco import CocoDataset, write_json_atomic
from halluremedy.data.conversation import ConversationEncoder, Turn
from halluremedy.data.images import ImageBank
from halluremedy.generate.pairs import caption_prompt_by_index
from halluremedy.models.llava import image_seq_length, load_model


@dataclass(frozen=True)
class NoiseProbeConfig:
    model: str = required("the model directory (Hugging Face layout)")
    data: str = required("COCO-format root")
    split: str = option("val", "split probed")
    images: int = option(300, "first N images of the split")
    steps: tuple[int, ...] = option((500,), "diffusion steps k (T=1000)")
    seed: int = option(0, "noise seed")
    out: str = option("runs/noise_argmax_probe.json", "JSON output")

    def __post_init__(self) -> None:
        check_range(self, "images", ge=1)
        check(bool(self.steps) and all(0 <= k < 1000 for k in self.steps), "steps", "must be in [0, 1000)",
              list(self.steps))


@torch.no_grad()
def probe(model, processor, dataset: CocoDataset, steps: list[int], seed: int) -> dict:
    """``{step: {"object"|"other": {"n", "clean!=ref", "noised!=ref", "noised!=clean", "noised!=ref, in caption"},
    "noised_object_words"}}`` (rates are shares of ``n``)."""
    object_words = {w for words in (dataset.synonyms or {}).values() for w in words} or set(dataset.categories)
    bank = ImageBank(dataset, processor.image_processor)
    encoder = ConversationEncoder(processor.tokenizer, image_seq_length(model))
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    counts = {k: collections.Counter() for k in steps}
    noised_words = {k: collections.Counter() for k in steps}
    for i, image in enumerate(tqdm(dataset.images, desc="noise probe", unit="img")):
        images01 = bank.get01([image.file_name])
        clean = bank.normalize(images01)
        for c, caption in enumerate(image.captions):
            ids, labels = encoder.encode([Turn(caption_prompt_by_index(c, caption), caption)])
            input_ids, targets = torch.tensor([ids]), torch.tensor(labels[1:])
            positions = (targets != -100).nonzero().flatten()
            words = processor.tokenizer.convert_ids_to_tokens(targets[positions].tolist())
            in_caption = set(targets[positions].tolist())
            clean_argmax = model(input_ids=input_ids, pixel_values=clean).logits[0, :-1].argmax(-1)[positions]
            for k in steps:
                noised = diffusion_noise(images01, k, seed=seed * 1_000_003 + i, mean=mean, std=std, impl="torch")
                noised_argmax = model(input_ids=input_ids, pixel_values=noised).logits[0, :-1].argmax(-1)[positions]
                for w, ref, a_c, a_n in zip(words, targets[positions].tolist(), clean_argmax.tolist(),
                                            noised_argmax.tolist()):
                    kind = "object" if w in object_words else "other"
                    counts[k][kind, "n"] += 1
                    counts[k][kind, "clean!=ref"] += a_c != ref
                    counts[k][kind, "noised!=ref"] += a_n != ref
                    counts[k][kind, "noised!=clean"] += a_n != a_c
                    counts[k][kind, "noised!=ref, in caption"] += a_n != ref and a_n in in_caption
                    if kind == "object" and a_n != ref:
                        noised_words[k][processor.tokenizer.convert_ids_to_tokens(a_n)] += 1
    out = {}
    for k in steps:
        out[k] = {kind: {"n": counts[k][kind, "n"],
                         **{m: counts[k][kind, m] / max(counts[k][kind, "n"], 1)
                            for m in ("clean!=ref", "noised!=ref", "noised!=clean", "noised!=ref, in caption")}}
                  for kind in ("object", "other")}
        out[k]["noised_object_words"] = noised_words[k].most_common(10)
    return out


def run_noise_probe(cfg: NoiseProbeConfig) -> dict:
    """Probe ``cfg.model`` on the first ``cfg.images`` of the split, write ``cfg.out``, print a line per step."""
    model, processor = load_model(check_model_dir(cfg.model))
    model.eval()
    dataset = CocoDataset.load(cfg.data, cfg.split)
    result = probe(model, processor, dataset.head(min(cfg.images, len(dataset))), list(cfg.steps), cfg.seed)
    write_json_atomic(cfg.out, {"args": asdict(cfg), "result": result}, indent=2)
    for k, r in result.items():
        print(f"k={k}: " + json.dumps({kind: {m: round(v, 3) if isinstance(v, float) else v for m, v in r[kind].items()}
                                       for kind in ("object", "other")}), "| noised object words:",
              r["noised_object_words"][:6])
    return result
