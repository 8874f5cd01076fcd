"""Learnability check (docs/base_llava_like.md): can a LLaVA base learn yes/no existence from its frozen tower at all?

    python scripts/qa_learnability_check.py 600                      # runs/llava_b5/model, 600 steps
    python scripts/qa_learnability_check.py 600 runs/llava_b6/model runs/qa_only_b6

Fine-tunes the projector and LM (tower frozen) on 4-turn yes/no existence QA only (20000 training
scenes rendered in memory), then evaluates greedy CHAIR and POPE on 300 held-out images of runs/scenes:val.
"""

from __future__ import annotations

import argparse
import json

import torch

from halluremedy.data.coco import CocoDataset
from halluremedy.data.conversation import ConversationEncoder
from halluremedy.eval.run import EvalConfig, evaluate
from halluremedy.models.generate import Decoding
from halluremedy.models.llava import load_model
from halluremedy.models.vision_pretrain import render_scenes
from halluremedy.train.llava_recipe import LlavaRecipeSpec, MemoryImageBank, _freeze, recipe_conversations
from halluremedy.train.loop import LoopConfig
from halluremedy.train.sft import SupervisedBatches, train_sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", type=int, help="optimiser steps")
    parser.add_argument("model_dir", nargs="?", default="runs/llava_b5/model", help="the base (default: %(default)s)")
    parser.add_argument("out", nargs="?", default="runs/qa_only", help="output directory (default: %(default)s)")
    args = parser.parse_args()
    steps, model_dir, out = args.steps, args.model_dir, args.out
    torch.set_num_threads(1)
    model, proc = load_model(model_dir)
    spec = LlavaRecipeSpec(questions_per_image=4, qa_turns=4, scenes=20000)
    images, scenes = render_scenes(spec.scenes, spec.scene_seed, spec.scene_config())
    data = [c for c in recipe_conversations(scenes, spec)["instruct"] if "/exists" in c.id]
    bank = MemoryImageBank([f"scene_{i:06d}" for i in range(len(scenes))], images)
    encoder = ConversationEncoder(proc.tokenizer, model.config.image_seq_length, max_length=256)
    _freeze(model, "projector+lm")
    model.train()
    train_sft(model, SupervisedBatches(data, encoder, bank, 32, seed=0),
              LoopConfig(steps=steps, lr=1e-3, log_every=50, save_every=10**9), out)
    model.eval()
    result = evaluate(model, proc, CocoDataset.load("runs/scenes", "val"),
                      EvalConfig(chair_images=300, pope_images=300, caption_decodings=(Decoding(0.0, 64),)))
    print(json.dumps({k: {m: round(v[m], 3) for m in ("accuracy", "f1", "yes_ratio")} for k, v in result["pope"].items()}))
    print("chair", {k: round(result["chair"]["greedy"][k], 3) for k in ("chair_s", "chair_i", "recall")})


if __name__ == "__main__":
    main()
