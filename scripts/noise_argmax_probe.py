"""What does POVID's noise-triggered term push down? A probe of the dispreferred tokens it would use.

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

import argparse
import collections
import json

import torch
from tqdm import tqdm
from vlm_kernels import diffusion_noise

from halluremedy.data.coco import CocoDataset, write_json_atomic
from halluremedy.data.conversation import ConversationEncoder, Turn
from halluremedy.data.images import ImageBank
from halluremedy.generate.pairs import caption_prompt_by_index
from halluremedy.models.llava import image_seq_length, load_model


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="COCO-format root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=300, help="first N images of the split")
    parser.add_argument("--steps", type=int, nargs="+", default=[500], help="diffusion steps k (T=1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/noise_argmax_probe.json")
    args = parser.parse_args()
    model, processor = load_model(args.model)
    model.eval()
    dataset = CocoDataset.load(args.data, args.split)
    result = probe(model, processor, dataset.head(min(args.images, len(dataset))), args.steps, args.seed)
    write_json_atomic(args.out, {"args": vars(args), "result": result}, indent=2)
    for k, r in result.items():
        print(f"k={k}: " + json.dumps({kind: {m: round(v, 3) if isinstance(v, float) else v for m, v in r[kind].items()}
                                       for kind in ("object", "other")}), "| noised object words:",
              r["noised_object_words"][:6])


if __name__ == "__main__":
    main()
