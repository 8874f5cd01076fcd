"""POVID on a LLaVA model: stage 1 (text-hallucination DPO), stage 2 (+ noise-triggered DPO), evaluation.

With no arguments it runs the embedded default end to end on a CPU: the scene world and a tiny base
model (built if absent), rule-based hallucination pairs, stage 1, stage 2, then CHAIR and POPE
before and after on held-out scenes (``python scripts/train_dpo.py`` is the same command)::

    halluremedy train-dpo
    halluremedy train-dpo --control          # also the continued-SFT control, same data and budget
    halluremedy train-dpo --config configs/embedded_default.yaml --stage2-steps 400

A real checkpoint and dataset (local paths only; nothing is downloaded)::

    halluremedy train-dpo --config configs/llava15_7b_1gpu.yaml --model /ckpt/llava-1.5-7b-hf \\
        --data /data/coco --pairs povid_17k.jsonl

``--pairs`` takes POVID's LLaVA-conversation JSON(L) or TRL-style {prompt, chosen, rejected, images}.

Data parallel on one node (``--batch-size`` is per process; LoRA runs use DDP, ``--no-lora`` full
fine-tunes FSDP2; rank 0 writes checkpoints, models and the evaluation)::

    torchrun --nproc_per_node 8 scripts/train_dpo.py --model /ckpt/llava-1.5-7b-hf --data /data/coco \\
        --split train2014 --pairs povid_17k.jsonl --eval-split val2014 --device cuda --batch-size 2 --lr 1e-7

Everything is checked before the first step: the options, every image and annotation of both
splits, and every preference record (UTF-8, JSON, fields, images it names, its length against the
model's context and, for a word-level tokenizer, its words against the vocabulary). A problem stops
the run with one line, ``halluremedy: error: FILE:LINE: field 'x': ...``, exit status 2 and nothing
written to OUT; ``--debug`` shows the traceback instead.

OUT holds ``summary.md`` (the resolved config, the results, where everything is), ``config.yaml``,
``stageN/`` (``model/``, ``metrics.png``, ``metrics.jsonl``), ``sft_control/``, ``pairs.jsonl`` (when
generated), ``models.json``, ``eval.json`` and ``eval.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from halluremedy.config import check, check_choices, check_device, check_range, flat_config, option, section
from halluremedy.data.coco import write_json_atomic
from halluremedy.data.preference import check_records_fit, load_preference_file, write_preferences
from halluremedy.errors import DatasetError
from halluremedy.eval.run import EvalConfig, check_evaluation, evaluate, format_table, present_words, summary_row
from halluremedy.generate.injector import RuleBasedEditor
from halluremedy.generate.pairs import generate_preference_pairs
from halluremedy.models.llava import load_model
from halluremedy.pipeline import record_encoder, resolve_base, resolve_data
from halluremedy.recipes.sections import (
    DataSection,
    EvalSection,
    LoopSection,
    LoraSection,
    ModelSection,
    ObjectiveSection,
    PairsSection,
    RunSection,
    assemble,
)
from halluremedy.recipes.summary import write_summary
from halluremedy.train.distributed import init_data_parallel, main_rank_first
from halluremedy.train.dpo import PreferenceObjective
from halluremedy.train.stages import TuningSpec, run_preference_stage, run_sft_control


@dataclass(frozen=True)
class DPORecipe:
    stages: tuple[Literal[1, 2], ...] = option((1, 2), "stages to run: 1, 2 or 1 2 (stage 2 starts from stage "
                                               "1's merged model)")
    stage1_steps: int = option(120, "optimiser steps of stage 1")
    stage2_steps: int = option(120, "optimiser steps of stage 2")
    control: bool = option(False, "also train the continued-SFT control on the chosen answers")
    seed: int = option(0, "seed for the generated pairs, adapters, data order, noise and sampled evaluation")
    model: ModelSection = section(ModelSection())
    data: DataSection = section(DataSection())
    preference: PairsSection = section(PairsSection())
    lora: LoraSection = section(LoraSection())
    objective: ObjectiveSection = section(ObjectiveSection(nll_alpha=1.0, noise_positions=("present",)))
    loop: LoopSection = section(LoopSection(lr=5e-5))
    eval: EvalSection = section(EvalSection())
    run: RunSection = section(RunSection(out="runs/povid"))

    def __post_init__(self) -> None:
        """Every option checked before anything is loaded (ConfigError names the flag); each section
        checked its own."""
        check_choices(self)
        check(bool(self.stages), "stages", "must name a stage, 1 and/or 2", self.stages)
        check(list(self.stages) == sorted(self.stages), "stages", "must list stage 1 before stage 2", self.stages)
        for stage in self.stages:
            check_range(self, f"stage{stage}_steps", ge=1)
        check_range(self, "seed", ge=0)
        check(self.lora.lora or self.objective.reference != "adapter", "reference",
              "adapter (LoRA disabled) needs --lora; use copy or precomputed for a full fine-tune",
              self.objective.reference)

    def steps(self, stage: int) -> int:
        return self.stage1_steps if stage == 1 else self.stage2_steps


def train_dpo(cfg: DPORecipe) -> dict[str, Path]:
    """Run the recipe; returns ``{name: model directory}`` (base, stage1, stage2, sft-control)."""
    check_device(cfg.model)  # a GPU where --device asks for one
    out = Path(cfg.run.out)
    shard, device = init_data_parallel(cfg.model.device)  # torchrun: this process's rank and GPU
    # inputs first, every one checked before the first step and before anything is written to OUT
    with main_rank_first():  # rank 0 generates what is absent, the others read it
        train, heldout = resolve_data(cfg.model.model, cfg.data.data, cfg.data.split, cfg.data.eval_split, base=cfg.model.base,
                                      scene_train_images=cfg.data.scene_train_images,
                                      scene_heldout_images=cfg.data.scene_heldout_images)
    eval_cfg = None
    if cfg.eval.eval_images:
        eval_cfg = EvalConfig.greedy_and_sampled(cfg.eval.eval_images, cfg.seed)
        check_evaluation(heldout, eval_cfg, chair_option="--eval-images", pope_option="--eval-images")
    places = None
    if cfg.preference.pairs:
        loaded = load_preference_file(cfg.preference.pairs, known_images={im.file_name for im in train.images},
                                      skip_invalid=cfg.preference.skip_invalid)
        records, places = loaded.records, loaded.places
        if loaded.errors:
            print(f"skipped {len(loaded.errors)} invalid preference records, first: {loaded.errors[0]}")
    else:
        editor = RuleBasedEditor.for_dataset(train, cooccur_modes=list(cfg.preference.cooccur_modes))
        generation = generate_preference_pairs(train, editor, seed=cfg.seed,
                                               kinds=list(cfg.preference.edit_kinds), progress=True)
        records = generation.records
        if not records:
            raise DatasetError(f"{train.instances_path}: no preference pair could be made from the captions of "
                               f"split '{train.split}' with --edit-kinds {' '.join(cfg.preference.edit_kinds)}")
    with main_rank_first():
        base_dir = resolve_base(cfg.model.model, cfg.data.data, base=cfg.model.base, base_out=cfg.model.base_out,
                                base_cycles=",".join(cfg.model.base_cycles),
                                scene_train_images=cfg.data.scene_train_images,
                                scene_heldout_images=cfg.data.scene_heldout_images)
    check_records_fit(records, record_encoder(base_dir), places=places, model=str(base_dir))
    if not cfg.preference.pairs and shard.is_main:
        write_preferences(out / "pairs.jsonl", records)
        print(generation.summary())

    def tuning(steps: int) -> TuningSpec:
        return assemble(TuningSpec, cfg.model, cfg.lora, cfg.loop, steps=steps, seed=cfg.seed)

    models = {"base": base_dir}
    current = base_dir
    for stage in cfg.stages:
        current = run_preference_stage(current, records, train, out / f"stage{stage}",
                                       assemble(PreferenceObjective, cfg.objective, stage=stage),
                                       tuning(cfg.steps(stage)), reference=cfg.objective.reference, device=device,
                                       resume=cfg.run.resume, allow_changes=cfg.run.resume_with_changes,
                                       present_words=present_words(train))
        models[f"stage{stage}"] = current
    if cfg.control:
        spec = tuning(sum(map(cfg.steps, cfg.stages)))
        models["sft-control"] = run_sft_control(base_dir, records, train, out / "sft_control", spec, device=device,
                                                resume=cfg.run.resume, allow_changes=cfg.run.resume_with_changes)
    if not shard.is_main:  # under torchrun, rank 0 alone evaluates and reports
        return models
    write_json_atomic(out / "models.json", {k: str(v) for k, v in models.items()}, indent=1)

    table = f"models: {out / 'models.json'} (--eval-images 0: not evaluated)"
    if eval_cfg is not None:
        rows, results = {}, {}
        for name, path in models.items():
            model, processor = load_model(path, device=device)
            results[name] = evaluate(model, processor, heldout, eval_cfg)
            rows[name] = summary_row(results[name])
        write_json_atomic(out / "eval.json", {"recipe": flat_config(cfg), "results": results}, indent=2)
        table = format_table(rows, next(iter(results.values()))["chair_signature"])
        (out / "eval.md").write_text(table + "\n")
        print(table)
        print(f"full results: {out / 'eval.json'}")
    files = {f"{name} model": path for name, path in models.items()}
    for name in [f"stage{s}" for s in cfg.stages] + (["sft_control"] if cfg.control else []):
        files |= {f"{name} LoRA adapter (peft)": out / name / "adapter",
                  f"{name} training curves": out / name / "metrics.png",
                  f"{name} metrics per step": out / name / "metrics.jsonl",
                  f"{name} checkpoint (for --resume)": out / name / "checkpoint"}
    files |= {"generated pairs": out / "pairs.jsonl", "evaluation, every caption and answer": out / "eval.json",
              "models by name": out / "models.json"}
    print(f"summary: {write_summary(out, 'train-dpo', cfg, results=table, files=files)}")
    print(json.dumps({k: str(v) for k, v in models.items()}, indent=1))
    return models
