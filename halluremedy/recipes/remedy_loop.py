"""Diagnose -> generate -> train -> re-diagnose, with a before/after report, in one command
(``scripts/remedy_loop.py``, ``halluremedy remedy``; :func:`run_remedy_loop`).

1. Diagnose the base model on a diagnosis split (never the held-out split): detailed captions,
   short captions, existence and attribute probes against the annotations -> per-class FP/FN
   rates, attribute confusions, trigger pairs (``OUT/diagnosis/base/``: JSON, report.md, PNG).
2. Generate, per seed, equal-sized data for each arm from the training split's annotations (or,
   ``--fresh-scenes N``, from N new scene-world images rendered per arm, their classes drawn by
   the arm's weights: DFTG's "generate images of the diagnosed concepts"; same scene seed and
   count for both arms, so only the class mix differs):

   ============== =====================================================================
   targeted-sft   yes/no existence, attribute, relation questions + faithful captions,
                  aimed by the diagnosis (classes, triggers, confused values)
   untargeted-sft the same generator, every class / pair equally likely
   targeted-dpo   caption pairs, rejected = + an absent object from the model's own
                  trigger -> hallucination table (--dpo-edit rename: a present object
                  renamed to what the model itself calls it, from its misnaming table)
   untargeted-dpo the same with every pair equally likely
   reflective     REVERIE: question -> answer, then "Explain why." -> rationale and
                  "Explain why this answer is wrong: ..." -> rationale, separate samples
   answer-only    the same questions, answers only
   reflective-positive / reflective-negative: one rationale kind only (REVERIE's ablation)
   ============== =====================================================================

3. Train each arm from the base with LoRA for the same steps and batch size (SFT arms through
   ``train_sft``, DPO arms through ``run_preference_stage``).
4. Evaluate on the held-out split (CHAIR, POPE random/popular/adversarial) and re-diagnose; write
   ``OUT/report.md``, ``OUT/before_after.png`` and ``OUT/results.json`` (mean ± std over seeds,
   paired differences targeted - untargeted and reflective - answer-only). ``--test-data DIR``
   also captions a large test split (``--test-images``) with the base and every arm and reports
   same-seed CHAIR_s differences with an interval bootstrapped over seeds and images together:
   with a few hundred held-out images the image sample alone moves a difference by ~0.01.

    python scripts/remedy_loop.py                     # seed 0, six arms (~15 min on 1 CPU thread, tiny model)
    python scripts/remedy_loop.py --seeds 0 1 2       # the full protocol: mean ± std over 3 seeds

Finished arms are reused (``--resume``, on by default), so a run can be extended seed by seed; use a
fresh ``--out`` after changing data or training options (reuse does not compare them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from halluremedy.config import check, check_choices, check_device, check_range, flat_config, option, section
from halluremedy.data.coco import CocoDataset, write_json_atomic
from halluremedy.data.preference import write_preferences
from halluremedy.data.reflective import reflective_conversations, write_reflective
from halluremedy.data.scenes import CLASSES, SceneConfig, make_dataset
from halluremedy.diagnose import (
    Diagnosis,
    ProbeConfig,
    diagnose,
    write_comparison,
    write_report,
)
from halluremedy.errors import ConfigError
from halluremedy.eval.chair import class_row
from halluremedy.eval.run import EvalConfig, check_evaluation, evaluate, summary_row
from halluremedy.eval.seeds import caption_flags, paired_chair_s
from halluremedy.generate.reflective import scene_reflective_records
from halluremedy.generate.targeted import (
    CLASS_SCORES,
    PAIR_EDITS,
    InstructionMix,
    TargetWeights,
    instruction_conversations,
    sample_questions,
    targeted_preference_pairs,
    write_instructions,
)
from halluremedy.models.llava import load_model
from halluremedy.pipeline import claim_scene_root, resolve_model_and_data, scene_data_spec
from halluremedy.recipes.sections import (
    DataSection,
    EvalSection,
    LoopSection,
    LoraSection,
    ModelSection,
    ObjectiveSection,
    RunSection,
    assemble,
)
from halluremedy.train.dpo import PreferenceObjective
from halluremedy.train.stages import TuningSpec, run_conversation_sft, run_preference_stage

ARMS = ("targeted-sft", "untargeted-sft", "targeted-dpo", "untargeted-dpo", "reflective", "answer-only",
        "reflective-positive", "reflective-negative")
REFLECTIVE_LAYOUTS = {"reflective": "both", "answer-only": "answer", "reflective-positive": "positive",
                      "reflective-negative": "negative"}
COMPARISONS = (("targeted-sft", "untargeted-sft"), ("targeted-dpo", "untargeted-dpo"), ("reflective", "answer-only"),
               ("reflective-positive", "answer-only"), ("reflective-negative", "answer-only"))
COLUMNS = ("CHAIR_s/greedy", "CHAIR_i/greedy", "recall/greedy", "diagnosed/CHAIR_s", "POPE-ran/F1", "POPE-pop/F1",
           "POPE-adv/F1", "POPE-ran/acc", "POPE-pop/acc", "POPE-adv/acc", "POPE-adv/yes")
Arm = Literal[ARMS]


@dataclass(frozen=True)
class RemedyConfig:
    arms: tuple[Arm, ...] = option(ARMS[:6], "arms to train and compare")
    seeds: tuple[int, ...] = option((0,), "seeds (data, adapters, batch order): e.g. --seeds 0 1 2")
    records: int = option(960, "records per arm and seed (reflective: questions; each gives 2 samples)")
    steps: int = option(120, "optimiser steps per arm")
    dpo_lr: float = option(2e-4, "peak learning rate of the DPO arms (--lr: of the SFT arms)")
    dpo_edit: Literal[PAIR_EDITS] = option("add", "DPO arms' rejected caption: add (+ an absent object the model "
                                           "hallucinates) | rename (a present object named as the class the model "
                                           "mistakes it for)")
    focus: float = option(1.0, "targeted class weights: (diagnosed class score + 0.02) ** FOCUS")
    class_score: Literal[CLASS_SCORES] = option("error", "the diagnosed class score the targeted arms aim at: "
                                                "hallucination (named while absent) | error (also missed while "
                                                "present, so a class the model cannot see and calls something else "
                                                "is aimed at too)")
    class_balance: bool = option(True, "SFT arms: ask about every class as often present as absent, and caption images "
                                 "holding and lacking a drawn class equally (targeting moves which classes and images, "
                                 "not a class's answer prior)")
    reflective_weights: Literal["targeted", "uniform"] = option("targeted", "questions of the reflective arms")
    fresh_scenes: int = option(0, "scene world only: draw each arm's data from this many newly rendered scenes whose "
                                  "classes follow the arm's weights (0: from the training split)")
    diag_data: str = option("", "root of the diagnosis split; empty: OUT/diag_scenes (scene world, generated)")
    diag_split: str = option("diag", "diagnosis split: never the held-out split")
    diag_images: int = option(300, "images diagnosed (and generated, for the embedded default)")
    diag_scene_seed: int = option(3, "embedded default only: scene seed of the generated diagnosis split")
    rediagnose: bool = option(True, "re-diagnose every trained arm on the diagnosis split")
    test_data: str = option("", "COCO-format root of a large test split: caption it greedily with the base and every "
                            "arm and report same-seed CHAIR_s differences with an interval over seeds and images "
                            "(empty: skip)")
    test_split: str = option("test", "split of --test-data")
    test_images: int = option(0, "test-split images captioned (0: all)")
    model: ModelSection = section(ModelSection())
    data: DataSection = section(DataSection())
    lora: LoraSection = section(LoraSection(lora_r=16, lora_alpha=32))
    objective: ObjectiveSection = section(ObjectiveSection(nll_alpha=1.0))  # the DPO arms' (stage 1)
    loop: LoopSection = section(LoopSection(lr=5e-4))
    eval: EvalSection = section(EvalSection(eval_images=200))
    run: RunSection = section(RunSection(out="runs/remedy", resume=True))

    def __post_init__(self) -> None:
        """Every option checked before anything is loaded (ConfigError names the flag); each section
        checked its own."""
        check_choices(self)
        check(bool(self.arms), "arms", "must name at least one arm", self.arms)
        check(bool(self.seeds) and min(self.seeds) >= 0 and len(set(self.seeds)) == len(self.seeds), "seeds",
              "must be distinct integers >= 0", self.seeds)
        for name in ("records", "steps", "diag_images"):
            check_range(self, name, ge=1)
        check_range(self.eval, "eval_images", ge=1)
        check_range(self, "dpo_lr", gt=0)
        for name in ("focus", "fresh_scenes", "test_images", "diag_scene_seed"):
            check_range(self, name, ge=0)
        check(self.lora.lora or self.objective.reference != "adapter", "reference",
              "adapter (LoRA disabled) needs --lora; use copy or precomputed for a full fine-tune",
              self.objective.reference)


def diagnosed(model_dir: Path, dataset: CocoDataset, probe: ProbeConfig, out: Path, name: str, cfg: RemedyConfig
              ) -> Diagnosis:
    if cfg.run.resume and (out / "diagnosis.json").exists():
        return Diagnosis.load(out / "diagnosis.json")
    model, processor = load_model(model_dir, device=cfg.model.device)
    result = diagnose(model, processor, dataset, probe, model_name=name)
    write_report(result, out)
    return result


def evaluation(model_dir: Path, data: CocoDataset, eval_cfg: EvalConfig, path: Path, cfg: RemedyConfig) -> dict:
    """``evaluate``'s result for the model on ``data``, kept at ``path`` (reused with ``--resume``)."""
    if cfg.run.resume and path.exists():
        return json.loads(path.read_text())
    model, processor = load_model(model_dir, device=cfg.model.device)
    result = evaluate(model, processor, data, eval_cfg)
    write_json_atomic(path, result, indent=2)
    return result


def evaluated(model_dir: Path, heldout: CocoDataset, eval_cfg: EvalConfig, path: Path, worst: list[str],
              cfg: RemedyConfig) -> dict[str, float]:
    """Headline numbers on the held-out split, plus ``diagnosed/CHAIR_s``: captions hallucinating
    one of the base's ``worst`` classes, and the greedy captions' ``class_row``."""
    result = evaluation(model_dir, heldout, eval_cfg, path, cfg)
    row = summary_row(result)
    captions = result["chair"]["greedy"]["per_caption"]
    row["diagnosed/CHAIR_s"] = sum(any(m["category"] in worst for m in c["hallucinated"]) for c in captions) / len(captions)
    return {**row, **class_row(captions)}


def arm_weights(arm: str, cfg: RemedyConfig) -> str:
    """The key of the weights an arm's data is drawn with."""
    return arm.split("-")[0] if arm.endswith(("-sft", "-dpo")) else cfg.reflective_weights


FRESH_SCENE_SEED = 100  # + the run seed; the default splits use scene seeds 1-3


def fresh_scenes(root: Path, weights: TargetWeights, n: int, seed: int, world: SceneConfig) -> CocoDataset:
    """``n`` new clean images of the scene world ``world`` whose classes follow
    ``weights.scene_class_weights``, written as split ``fresh_{weights.name}`` under ``root``;
    regenerated every call (seconds)."""
    cfg = replace(world, class_weights=weights.scene_class_weights(CLASSES))
    return make_dataset(root, f"fresh_{weights.name}", n, FRESH_SCENE_SEED + seed, cfg, progress=False)


def arm_data(arm: str, train: CocoDataset, weights: TargetWeights, cfg: RemedyConfig, seed: int,
             out: Path) -> tuple[str, list]:
    """("sft", conversations) or ("dpo", preference records) for one arm, drawn from ``train`` with
    ``weights``; also written to ``out``."""
    n = cfg.records
    if arm.endswith("-sft"):
        mix = InstructionMix(class_balance=cfg.class_balance)
        conversations = instruction_conversations(sample_questions(train, weights, n, seed=seed, mix=mix))
        write_instructions(out / "data.jsonl", conversations)
        return "sft", conversations
    if arm.endswith("-dpo"):
        records = targeted_preference_pairs(train, weights, n, seed=seed, edit=cfg.dpo_edit)
        write_preferences(out / "pairs.jsonl", records)
        return "dpo", records
    records = scene_reflective_records(train, n, seed=seed, weights=weights)
    write_reflective(out / "reflective.jsonl", records)
    conversations = reflective_conversations(records, REFLECTIVE_LAYOUTS[arm])
    write_instructions(out / "data.jsonl", conversations)
    return "sft", conversations


def run_remedy_loop(cfg: RemedyConfig) -> dict[str, Path]:
    """The whole loop (module docstring) for ``cfg``; returns the report's paths (``write_comparison``)."""
    check_device(cfg.model)  # a GPU where --device asks for one
    arms, seeds = list(cfg.arms), list(cfg.seeds)
    out = Path(cfg.run.out)

    # data, base model, diagnosis split
    base_dir, train, heldout = resolve_model_and_data(
        cfg.model.model, cfg.data.data, cfg.data.split, cfg.data.eval_split, base=cfg.model.base, base_out=cfg.model.base_out,
        base_cycles=",".join(cfg.model.base_cycles), scene_train_images=cfg.data.scene_train_images,
        scene_heldout_images=cfg.data.scene_heldout_images)
    diag_root = Path(cfg.diag_data) if cfg.diag_data else out / "diag_scenes"
    if (diag_root / "annotations" / f"instances_{cfg.diag_split}.json").exists():
        diag = CocoDataset.load(diag_root, cfg.diag_split)
    elif cfg.model.model:
        raise ConfigError(f"option '--diag-data': {diag_root} has no diagnosis split {cfg.diag_split!r} "
                          f"(annotations/instances_{cfg.diag_split}.json); pass --diag-data/--diag-split")
    else:
        diag = make_dataset(claim_scene_root(diag_root, "--diag-data"), cfg.diag_split, cfg.diag_images,
                            cfg.diag_scene_seed, scene_data_spec(cfg.model.base).scene_config())
    if cfg.fresh_scenes and (unknown := sorted(set(train.categories) - set(CLASSES))):
        raise ConfigError(f"option '--fresh-scenes': renders scene-world images, but {train.root}:{train.split} has "
                          f"other classes {unknown[:5]}")
    if diag_root.resolve() == Path(cfg.data.data).resolve() and cfg.diag_split == cfg.data.eval_split:
        raise ConfigError(f"option '--diag-split': the diagnosis split must not be the held-out split "
                          f"({cfg.data.eval_split!r})")
    diag.verify_images(progress=True)
    eval_cfg = EvalConfig(chair_images=cfg.eval.eval_images, pope_images=cfg.eval.eval_images, seed=0, progress=False)
    check_evaluation(heldout, eval_cfg, chair_option="--eval-images", pope_option="--eval-images")
    if cfg.test_data:
        test = CocoDataset.load(cfg.test_data, cfg.test_split)
        test_cfg = EvalConfig(chair_images=cfg.test_images or len(test), pope_images=0, pope_settings=(), seed=0,
                              progress=False)
        check_evaluation(test, test_cfg, chair_option="--test-images")
        test.verify_images(progress=True)

    # 1. diagnose the base
    probe = ProbeConfig(images=cfg.diag_images)
    before = diagnosed(base_dir, diag, probe, out / "diagnosis" / "base", "base", cfg)
    worst = [c.category for c in before.worst_classes(3)]
    weights = {"targeted": TargetWeights.from_diagnosis(before, focus=cfg.focus, class_score=cfg.class_score), "untargeted": TargetWeights.uniform(train.categories)}
    weights["uniform"] = weights["untargeted"]
    write_json_atomic(out / "target_weights.json", {k: w.to_dict() for k, w in weights.items() if k != "uniform"},
                      indent=2)
    print(f"diagnosis: {out / 'diagnosis' / 'base' / 'report.md'}; worst classes {worst}", flush=True)

    rows: dict[str, list[dict[str, float]]] = {"base": [evaluated(base_dir, heldout, eval_cfg, out / "base_eval.json",
                                                                  worst, cfg)]}
    # greedy captions of the large test split, per arm and seed: image_id -> hallucinated, and class_row
    flags: dict[str, list[dict[int, bool]]] = {}
    test_classes: dict[str, list[dict[str, float]]] = {}

    def captioned_test(name: str, model_dir: Path, path: Path) -> None:
        result = evaluation(model_dir, test, test_cfg, path, cfg)
        flags.setdefault(name, []).append(caption_flags(result))
        test_classes.setdefault(name, []).append(class_row(result["chair"]["greedy"]["per_caption"]))

    if cfg.test_data:
        test_name = f"test_{cfg.test_split}.json"
        captioned_test("base", base_dir, out / f"base_{test_name}")
    after: dict[str, list[Diagnosis]] = {}

    # 2-4. generate, train, evaluate, re-diagnose: every arm, every seed
    for seed in seeds:
        for arm in arms:
            run_dir = out / f"seed{seed}" / arm
            run_dir.mkdir(parents=True, exist_ok=True)
            arm_weight = weights[arm_weights(arm, cfg)]
            source = train
            if cfg.fresh_scenes:
                world = replace(scene_data_spec(cfg.model.base).scene_config(), image_size=train.images[0].width)
                source = fresh_scenes(out / f"seed{seed}" / "scenes", arm_weight, cfg.fresh_scenes, seed, world)
            kind, data = arm_data(arm, source, arm_weight, cfg, seed, run_dir)
            arm_spec = assemble(TuningSpec, cfg.model, cfg.lora, cfg.loop, steps=cfg.steps, seed=seed)
            if kind == "sft":
                model_dir = run_conversation_sft(base_dir, data, source, run_dir, arm_spec, device=cfg.model.device,
                                                 resume=cfg.run.resume, allow_changes=cfg.run.resume_with_changes,
                                                 tag=arm)
            else:
                model_dir = run_preference_stage(base_dir, data, source, run_dir,
                                                 assemble(PreferenceObjective, cfg.objective, stage=1),
                                                 replace(arm_spec, lr=cfg.dpo_lr), reference=cfg.objective.reference,
                                                 device=cfg.model.device, resume=cfg.run.resume,
                                                 allow_changes=cfg.run.resume_with_changes)
            rows.setdefault(arm, []).append(evaluated(model_dir, heldout, eval_cfg, run_dir / "eval.json", worst, cfg))
            if cfg.test_data:
                captioned_test(arm, model_dir, run_dir / test_name)
            if cfg.rediagnose:
                after.setdefault(arm, []).append(diagnosed(model_dir, diag, probe, run_dir / "diagnosis",
                                                           f"{arm} seed {seed}", cfg))
            print(f"seed {seed} {arm}: " + ", ".join(f"{c} {rows[arm][-1][c]:.3f}" for c in COLUMNS
                                                   if c in rows[arm][-1]), flush=True)

    notes = [(f"arms {arms}, seeds {seeds}: {cfg.records} records per arm and seed"
              f"{f' from {cfg.fresh_scenes} fresh scenes drawn by its weights' if cfg.fresh_scenes else ''}, {cfg.steps} steps x "
             f"{cfg.loop.batch_size} samples, "
             f"{f'LoRA r{cfg.lora.lora_r}/a{cfg.lora.lora_alpha}' if cfg.lora.lora else 'full fine-tune'}, "
             f"lr {cfg.loop.lr:g} (DPO {cfg.dpo_lr:g}, "
             f"{cfg.dpo_edit} pairs)"),
             (f"held-out: {cfg.eval.eval_images} images of {heldout.root}:{heldout.split}; diagnosis: {cfg.diag_images} "
             f"images of {diag.root}:{diag.split}"),
             f"diagnosed/CHAIR_s: held-out captions hallucinating one of the base's worst classes {worst}"]
    test_differences = None
    if cfg.test_data:
        flags["base"] *= len(seeds)  # the base is one model: every seed's arm is compared with it
        pairs = [(a, b) for a, b in COMPARISONS if a in arms and b in arms] + [(a, "base") for a in arms]
        test_differences = {f"{a} - {b}": paired_chair_s(flags[a], flags[b]) for a, b in pairs}
    paths = write_comparison(before, after, rows, out, comparisons=COMPARISONS, columns=COLUMNS, notes=notes,
                             extra={"config": flat_config(cfg), "worst_classes": worst}, test_differences=test_differences,
                             test_label=f"{cfg.test_data}:{cfg.test_split}",
                             class_rows=test_classes if cfg.test_data else rows,
                             class_label=f"{cfg.test_data}:{cfg.test_split}" if cfg.test_data else
                             f"{heldout.root}:{heldout.split}")
    print(paths["markdown"].read_text())
    return paths
