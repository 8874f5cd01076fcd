"""halluremedy: preference and reflective tuning against hallucination in LLaVA-style models.

Every subcommand takes ``--config FILE.yaml`` (flat ``option: value`` keys, as in configs/) and
``--option value`` flags, which win; ``halluremedy SUBCOMMAND --help`` lists every option with its
default. The embedded default, end to end on a CPU (scene world, tiny base, POVID, evaluation)::

    halluremedy train-dpo
    halluremedy train-dpo --config configs/llava15_7b_1gpu.yaml --model /ckpt/llava-1.5-7b-hf \\
        --data /data/coco --pairs povid_17k.jsonl

An input error is one line, ``halluremedy: error: ...``, exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from halluremedy.config import DEBUG_HELP, add_config_arguments, config_from_args
from halluremedy.errors import DatasetError, run_main
from halluremedy.recipes import (
    diagnose,
    evaluate,
    generate,
    povid_experiment,
    remedy_loop,
    scenes,
    train_dpo,
    train_llava_base,
    train_sft,
)


@dataclass(frozen=True)
class Command:
    """A subcommand: its config dataclass, the function that runs it, and its ``--help`` text."""

    config: type
    run: Callable[[object], object]
    help: str
    description: str


COMMANDS = {
    "scenes": Command(scenes.ScenesConfig, scenes.write_scene_split, "write one scene-world split (images, "
                      "annotations, captions)", scenes.__doc__),
    "generate": Command(generate.GenerateConfig, generate.generate, "preference pairs from a split's reference "
                        "captions (rule-based or LLM hallucination edits)", generate.__doc__),
    "train-sft": Command(train_sft.SFTRecipe, train_sft.train_scene_base, "train the tiny scene-world base model "
                         "(SFT on captions + existence QA), then evaluate it", train_sft.__doc__),
    "train-llava-base": Command(train_llava_base.LlavaBaseRecipe, train_llava_base.build_llava_base, "the LLaVA-like "
                                "tiny base: pretrained frozen tower, alignment, instruction tuning; then evaluate it",
                                train_llava_base.__doc__),
    "train-dpo": Command(train_dpo.DPORecipe, train_dpo.train_dpo, "POVID: stage 1 (text DPO), stage 2 (+ "
                         "noise-triggered DPO), the SFT control, evaluation", train_dpo.__doc__),
    "eval": Command(evaluate.EvaluateConfig, evaluate.evaluate_model, "CHAIR (captions) and POPE "
                    "(random/popular/adversarial) of a model on a COCO-format split", evaluate.__doc__),
    "chair": Command(evaluate.ChairConfig, evaluate.score_caption_file, "CHAIR of captions made anywhere (JSONL of "
                     "image_id + caption)", evaluate.__doc__),
    "diagnose": Command(diagnose.DiagnoseConfig, diagnose.run_diagnosis, "a model's own hallucinations on an "
                        "annotated split: per-class rates, triggers, confusions (report.md)", diagnose.__doc__),
    "remedy": Command(remedy_loop.RemedyConfig, remedy_loop.run_remedy_loop, "diagnose -> generate -> train -> "
                      "re-diagnose: targeted vs untargeted data, REVERIE's reflective vs answer-only (report.md)",
                      remedy_loop.__doc__),
    "experiment": Command(povid_experiment.ExperimentConfig, povid_experiment.run_povid_experiment, "POVID vs its "
                          "SFT control over several seeds: mean ± std and same-seed differences (summary.md)",
                          povid_experiment.__doc__),
}


def main(argv: list[str] | None = None) -> int:
    """The ``halluremedy`` command: an input error is one line, ``halluremedy: error: ...``, exit 2
    (:func:`~halluremedy.errors.run_main`; ``--debug`` for the traceback)."""
    return run_main(_main, argv)


def parser() -> argparse.ArgumentParser:
    """``halluremedy`` and one subparser per :data:`COMMANDS` entry."""
    top = argparse.ArgumentParser(prog="halluremedy", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = top.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, command in COMMANDS.items():
        own = sub.add_parser(name, help=command.help, description=command.description,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(own, command.config)
        own.set_defaults(subparser=own)
    return top


def _main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    command = COMMANDS[args.command]
    cfg = config_from_args(args.subparser, command.config, args)
    if args.command == "chair":  # a bad captions file: one line, exit status 2, returned rather than raised
        try:
            command.run(cfg)
        except DatasetError as e:
            print(f"halluremedy: error: {e}", file=sys.stderr)
            return 2
        return 0
    command.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
