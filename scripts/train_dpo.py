"""POVID on a LLaVA model: stage 1 (text-hallucination DPO), stage 2 (+ noise-triggered DPO), evaluation.

With no arguments it runs the embedded default end to end on a CPU: the scene world and a tiny base
model (built if absent), rule-based hallucination pairs, stage 1, stage 2, then CHAIR and POPE
before and after on held-out scenes::

    python scripts/train_dpo.py
    python scripts/train_dpo.py --control          # also the continued-SFT control, same data and budget
    python scripts/train_dpo.py --config my.yaml --stage2-steps 400

A real checkpoint and dataset (local paths only; nothing is downloaded)::

    python scripts/train_dpo.py --model /ckpt/llava-1.5-7b-hf --data /data/coco --split train2014 \\
        --pairs povid_17k.jsonl --eval-split val2014 --device cuda --batch-size 1 --grad-accum 16 \\
        --lr 1e-7 --gradient-checkpointing

``--pairs`` takes POVID's LLaVA-conversation JSON(L) or TRL-style {prompt, chosen, rejected, images}.

Data parallel on one node (``--batch-size`` is per process; LoRA runs use DDP, ``--no-lora`` full
fine-tunes FSDP2; rank 0 writes checkpoints, models and the evaluation)::

    torchrun --nproc_per_node 8 scripts/train_dpo.py --model /ckpt/llava-1.5-7b-hf --data /data/coco \
        --split train2014 --pairs povid_17k.jsonl --eval-split val2014 --device cuda --batch-size 2 --lr 1e-7

Everything is checked before the first step: the options, every image and annotation of both
splits, and every preference record (UTF-8, JSON, fields, images it names, its length against the
model's context and, for a word-level tokenizer, its words against the vocabulary). A problem stops
the run with one line, ``halluremedy: error: FILE:LINE: field 'x': ...``, exit status 2 and nothing
written to OUT; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from halluremedy.config import (
    check,
    check_choice,
    check_device,
    check_range,
    check_subset,
    option,
    parse_config,
    split_items,
)
from halluremedy.data.coco import write_json_atomic
from halluremedy.data.preference import check_records_fit, load_preference_file, write_preferences
from halluremedy.errors import ConfigError, DatasetError, run_main
from halluremedy.eval.run import EvalConfig, check_evaluation, evaluate, format_table, summary_row
from halluremedy.generate.injector import COOCCUR_MODES, EDIT_KINDS, RuleBasedEditor
from halluremedy.generate.pairs import generate_preference_pairs
from halluremedy.models.llava import load_model
from halluremedy.pipeline import (
    BaseTrainSpec,
    SceneDataSpec,
    format_cycles,
    parse_cycles,
    record_encoder,
    resolve_base,
    resolve_data,
)
from halluremedy.train.distributed import init_data_parallel, main_rank_first
from halluremedy.train.dpo import NOISE_POSITION_RULES, PreferenceObjective
from halluremedy.train.povid import TuningSpec, run_preference_stage, run_sft_control


@dataclass(frozen=True)
class DPORecipe:
    model: str = option("", "base LLaVA directory; empty: the embedded tiny scene model (trained if absent)")
    data: str = option("runs/scenes", "COCO-format root holding the images (scene world generated if absent)")
    split: str = option("train", "split whose images the pairs use (and that pairs are generated from)")
    pairs: str = option("", "preference JSON(L); empty: rule-based hallucination edits of SPLIT's captions")
    edit_kinds: str = option(",".join(EDIT_KINDS), "rule-based edits the rejected answers may use (without --pairs): "
                             "comma-separated of " + ", ".join(EDIT_KINDS))
    cooccur_modes: str = option(",".join(COOCCUR_MODES), "how co-occurrence edits bring in the absent object: "
                                "add (a new mention) and/or replace (a mentioned object's noun), comma-separated")
    skip_invalid: bool = option(False, "skip malformed preference records (counted) instead of stopping")
    eval_split: str = option("val", "held-out split for CHAIR / POPE")
    base_out: str = option("runs/base", "embedded default only: where the tiny base model is (trained if absent)")
    base_cycles: str = option(format_cycles(BaseTrainSpec.cycles), "embedded default only: SFT cycles STEPS:LR,... of the tiny base (another recipe than the default trains it)")
    scene_train_images: int = option(SceneDataSpec.n_train, "embedded default only: scene-world training images")
    scene_heldout_images: int = option(SceneDataSpec.n_heldout, "embedded default only: held-out images")
    out: str = option("runs/povid", "output directory")
    stages: str = option("1,2", "stages to run: '1', '2' or '1,2' (stage 2 starts from stage 1's merged model)")
    stage1_steps: int = option(120, "optimiser steps of stage 1")
    stage2_steps: int = option(120, "optimiser steps of stage 2")
    batch_size: int = option(16, "preference records per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimiser step")
    lr: float = option(2e-4, "peak learning rate (cosine, 3% warmup); POVID used 1e-7 on 7B")
    beta: float = option(0.1, "DPO beta")
    loss_type: str = option("sigmoid", "stage-1 loss: sigmoid | ipo | hinge")
    label_smoothing: float = option(0.0, "cDPO label smoothing (sigmoid only)")
    nll_alpha: float = option(1.0, "RPO term: + alpha * mean token NLL of the chosen answer (0 = off)")
    noise_step: int = option(500, "diffusion step k of the noised image (sigmoid schedule, T=1000)")
    noise_positions: str = option("all", "stage-2 noise term: all (POVID) | seen (only y+ positions whose clean-image "
                                  "argmax is the y+ token) | novel (only positions whose noised argmax is a token "
                                  "y+ never contains) | present (only where it names no class annotated in the image); "
                                  "rules combine with commas, e.g. seen,novel; the rest cancel")
    weight_text: float = option(0.5, "stage-2 weight of the text-hallucination DPO term")
    weight_noise: float = option(0.5, "stage-2 weight of the noise-triggered DPO term")
    lora: bool = option(True, "train LoRA adapters (else a full fine-tune)")
    lora_r: int = option(128, "LoRA rank")
    lora_alpha: int = option(256, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    reference: str = option("adapter", "reference log-probs: adapter (LoRA disabled) | copy | precomputed")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (large models)")
    decoder_kernels: str = option("", "CUDA only, comma-separated: liger (Liger-Kernel's RMSNorm / SwiGLU / RoPE in "
                                  "the decoder) and/or compile (torch.compile per decoder layer); empty: plain torch")
    control: bool = option(False, "also train the continued-SFT control on the chosen answers")
    seed: int = option(0, "seed for adapters, data order, noise and sampled evaluation")
    eval_images: int = option(500, "held-out images for CHAIR and POPE (0: skip evaluation)")
    device: str = option("cpu", "cpu | cuda")
    resume: bool = option(False, "reuse finished stages and continue an interrupted one (same settings only)")
    resume_with_changes: bool = option(False, "with --resume: also continue a run made with other settings (the new "
                                       "learning rate and schedule length apply from the next step)")

    def __post_init__(self) -> None:
        """Every option checked before anything is loaded (ConfigError names the flag)."""
        stages = check_subset(self, "stages", ("1", "2"))
        check(stages == sorted(stages), "stages", "must list stage 1 before stage 2", self.stages)
        for stage in stages:
            check_range(self, f"stage{stage}_steps", ge=1)
        for name in ("batch_size", "grad_accum"):
            check_range(self, name, ge=1)
        for name in ("lr", "beta"):
            check_range(self, name, gt=0)
        check_choice(self, "loss_type", ("sigmoid", "ipo", "hinge"))
        check_range(self, "label_smoothing", ge=0, le=0.5)
        check(not self.label_smoothing or self.loss_type == "sigmoid", "label_smoothing",
              f"applies to --loss-type sigmoid only, not {self.loss_type!r}", self.label_smoothing)
        for name in ("nll_alpha", "weight_text", "weight_noise"):
            check_range(self, name, ge=0)
        check_range(self, "noise_step", ge=0, lt=1000)
        if self.noise_positions != "all":
            try:
                check_subset(self, "noise_positions", NOISE_POSITION_RULES)
            except ConfigError:
                raise ConfigError(f"option '--noise-positions': must be all, or distinct rules of "
                                  f"{', '.join(NOISE_POSITION_RULES)} joined by commas, got {self.noise_positions!r}"
                                  ) from None
        check_choice(self, "reference", ("adapter", "copy", "precomputed"))
        check(self.lora or self.reference != "adapter", "reference",
              "adapter (LoRA disabled) needs --lora; use copy or precomputed for a full fine-tune", self.reference)
        if self.lora:
            check_range(self, "lora_r", ge=1)
            check_range(self, "lora_alpha", gt=0)
            check_range(self, "lora_dropout", ge=0, lt=1)
        check_subset(self, "edit_kinds", EDIT_KINDS)
        check_subset(self, "cooccur_modes", COOCCUR_MODES)
        for name in ("eval_images", "seed"):
            check_range(self, name, ge=0)
        for name in ("scene_train_images", "scene_heldout_images"):
            check_range(self, name, ge=1)
        try:
            parse_cycles(self.base_cycles)
        except ValueError as e:
            raise ConfigError(f"option '--base-cycles': {e}") from None
        check_device(self)
        if self.decoder_kernels:
            check_subset(self, "decoder_kernels", ("liger", "compile"))
            check(self.device.startswith("cuda"), "decoder_kernels", "needs --device cuda (Triton / Inductor kernels)",
                  self.decoder_kernels)
        check(self.resume or not self.resume_with_changes, "resume_with_changes", "goes with --resume",
              self.resume_with_changes)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(DPORecipe, __doc__, argv)
    out = Path(cfg.out)
    shard, device = init_data_parallel(cfg.device)  # torchrun: this process's rank and GPU
    # inputs first, every one checked before the first step and before anything is written to OUT
    with main_rank_first():  # rank 0 generates what is absent, the others read it
        train, heldout = resolve_data(cfg.model, cfg.data, cfg.split, cfg.eval_split,
                                      scene_train_images=cfg.scene_train_images,
                                      scene_heldout_images=cfg.scene_heldout_images)
    eval_cfg = None
    if cfg.eval_images:
        eval_cfg = EvalConfig.greedy_and_sampled(cfg.eval_images, cfg.seed)
        check_evaluation(heldout, eval_cfg, chair_option="--eval-images", pope_option="--eval-images")
    places = None
    if cfg.pairs:
        loaded = load_preference_file(cfg.pairs, known_images={im.file_name for im in train.images},
                                      skip_invalid=cfg.skip_invalid)
        records, places = loaded.records, loaded.places
        if loaded.errors:
            print(f"skipped {len(loaded.errors)} invalid preference records, first: {loaded.errors[0]}")
    else:
        editor = RuleBasedEditor.for_dataset(train, cooccur_modes=split_items(cfg.cooccur_modes))
        generation = generate_preference_pairs(train, editor, seed=cfg.seed, kinds=split_items(cfg.edit_kinds),
                                               progress=True)
        records = generation.records
        if not records:
            raise DatasetError(f"{train.instances_path}: no preference pair could be made from the captions of "
                               f"split '{train.split}' with --edit-kinds {cfg.edit_kinds}")
    with main_rank_first():
        base_dir = resolve_base(cfg.model, cfg.data, base_out=cfg.base_out, base_cycles=cfg.base_cycles,
                                scene_train_images=cfg.scene_train_images,
                                scene_heldout_images=cfg.scene_heldout_images)
    check_records_fit(records, record_encoder(base_dir), places=places, model=str(base_dir))
    if not cfg.pairs and shard.is_main:
        write_preferences(out / "pairs.jsonl", records)
        print(generation.summary())

    spec = TuningSpec(batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr, lora=cfg.lora,
                      lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed,
                      decoder_kernels=",".join(split_items(cfg.decoder_kernels)))
    objective = PreferenceObjective(loss_type=cfg.loss_type, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                                    nll_alpha=cfg.nll_alpha, noise_step=cfg.noise_step, noise_positions=cfg.noise_positions,
                                    weight_text=cfg.weight_text,
                                    weight_noise=cfg.weight_noise)
    stages = [int(s) for s in split_items(cfg.stages)]
    models = {"base": base_dir}
    current = base_dir
    for stage in stages:
        steps = cfg.stage1_steps if stage == 1 else cfg.stage2_steps
        current = run_preference_stage(current, records, train, out / f"stage{stage}",
                                       replace(objective, stage=stage), replace(spec, steps=steps),
                                       reference=cfg.reference, device=device, resume=cfg.resume,
                                       allow_changes=cfg.resume_with_changes)
        models[f"stage{stage}"] = current
    if cfg.control:
        steps = sum(cfg.stage1_steps if s == 1 else cfg.stage2_steps for s in stages)
        models["sft-control"] = run_sft_control(base_dir, records, train, out / "sft_control", replace(spec, steps=steps),
                                                device=device, resume=cfg.resume, allow_changes=cfg.resume_with_changes)
    if not shard.is_main:  # under torchrun, rank 0 alone evaluates and reports
        return
    write_json_atomic(out / "models.json", {k: str(v) for k, v in models.items()}, indent=1)

    if eval_cfg is not None:
        rows, results = {}, {}
        for name, path in models.items():
            model, processor = load_model(path, device=device)
            results[name] = evaluate(model, processor, heldout, eval_cfg)
            rows[name] = summary_row(results[name])
        write_json_atomic(out / "eval.json", {"recipe": asdict(cfg), "results": results}, indent=2)
        table = format_table(rows, next(iter(results.values()))["chair_signature"])
        (out / "eval.md").write_text(table + "\n")
        print(table)
        print(f"full results: {out / 'eval.json'}")
    print(json.dumps({k: str(v) for k, v in models.items()}, indent=1))


if __name__ == "__main__":
    run_main(main)
