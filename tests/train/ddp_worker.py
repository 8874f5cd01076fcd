"""One rank of a data-parallel POVID run (stage 1, stage 2 on a precomputed reference, the SFT
control, and a full fine-tune of stage 1 against a frozen copy), started by ``torchrun`` from
``test_distributed.py``; every stage in ``OUT/<stage>``.

``--die-after-save K``: rank 1 exits right after the K-th checkpoint of the run is on disk (a rank
killed mid-run), which brings the whole group down as a crash would.
"""

import argparse
import os
from dataclasses import replace

from halluremedy.data.coco import CocoDataset
from halluremedy.data.preference import load_preferences
from halluremedy.train import loop
from halluremedy.train.distributed import init_data_parallel
from halluremedy.train.dpo import PreferenceObjective
from halluremedy.train.stages import TuningSpec, run_preference_stage, run_sft_control


def die_after_save(k: int) -> None:
    real, saves = loop.barrier, [0]

    def barrier_then_die():
        real()
        saves[0] += 1
        if saves[0] == k and int(os.environ["RANK"]) == 1:
            os._exit(3)

    loop.barrier = barrier_then_die


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--data", "--base", "--pairs", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--die-after-save", type=int, default=0)
    args = parser.parse_args()
    init_data_parallel("cpu")
    if args.die_after_save:
        die_after_save(args.die_after_save)
    dataset = CocoDataset.load(args.data, "train")
    records, _ = load_preferences(args.pairs)
    run(args.base, records, dataset, args.out, args.batch_size, resume=args.resume)


def run(base, records, dataset, out, batch_size, resume=False):
    """The three stages, each from the model the recipe would start it from."""
    spec = TuningSpec(steps=4, batch_size=batch_size, grad_accum=2, lr=1e-2, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    objective = PreferenceObjective(stage=1, nll_alpha=0.5)
    stage1 = run_preference_stage(base, records, dataset, f"{out}/stage1", objective, spec, resume=resume)
    run_preference_stage(stage1, records, dataset, f"{out}/stage2", replace(objective, stage=2), spec,
                         reference="precomputed", resume=resume)
    run_sft_control(base, records, dataset, f"{out}/control", spec, resume=resume)
    run_preference_stage(base, records, dataset, f"{out}/full", objective, replace(spec, lora=False, lr=1e-3),
                         reference="copy", resume=resume)


if __name__ == "__main__":
    main()
