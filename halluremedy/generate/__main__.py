"""CLI: preference pairs from a COCO-format split, e.g.

    python -m halluremedy.generate --data data/scenes --split train --out pairs.jsonl --seed 0
    python -m halluremedy.generate --data data/coco --split train2014 --out pairs.jsonl --seed 0 \\
        --editor llm --base-url http://127.0.0.1:8000/v1 --model NAME [--api-key-env OPENAI_API_KEY]

Prints how many captions each kind edited, how many no kind could edit, and how many were skipped
because they name an object the annotations lack.
"""

from __future__ import annotations

import argparse
import logging

from halluremedy.data.coco import CocoDataset
from halluremedy.data.preference import write_preferences
from halluremedy.data.sft import CAPTION_PROMPTS
from halluremedy.generate.cooccurrence import CooccurrenceStats
from halluremedy.generate.injector import COOCCUR_MODES, EDIT_KINDS, CaptionEditor, RuleBasedEditor
from halluremedy.generate.llm_editor import LLMEditor, LLMEditorConfig
from halluremedy.generate.pairs import caption_prompt_by_index, generate_preference_pairs

log = logging.getLogger("halluremedy.generate")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m halluremedy.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset root (annotations/ and SPLIT/)")
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True, help="output JSONL")
    parser.add_argument("--format", choices=("povid", "trl"), default="povid")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--kinds", nargs="+", choices=EDIT_KINDS, default=list(EDIT_KINDS))
    parser.add_argument("--per-image", type=int, default=None, help="at most this many pairs per image (default: all)")
    parser.add_argument("--prompt", choices=("by-index", "short", "detailed"), default="by-index",
                        help="by-index: caption k answers the SFT prompt k %% 2 (scene world); or one fixed prompt")
    parser.add_argument("--keep-unfaithful", action="store_true",
                        help="also use reference captions that name an object the annotations lack")
    parser.add_argument("--editor", choices=("rule", "llm"), default="rule")
    parser.add_argument("--cooccur-modes", nargs="+", choices=COOCCUR_MODES, default=list(COOCCUR_MODES),
                        help="rule editor: add an absent object, replace a present one, or both")
    parser.add_argument("--base-url", help="llm editor: OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="llm editor: model name")
    parser.add_argument("--api-key-env", default=None, help="llm editor: environment variable holding the API key")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--timeout", type=float, default=60.0, help="llm editor: seconds per request")
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    dataset = CocoDataset.load(args.data, args.split, require_captions=True)
    editor: CaptionEditor
    if args.editor == "rule":
        editor = RuleBasedEditor.for_dataset(dataset, cooccur_modes=args.cooccur_modes)
    else:
        if not args.base_url or not args.model:
            parser.error("--editor llm needs --base-url and --model")
        config = LLMEditorConfig(args.base_url, args.model, api_key_env=args.api_key_env,
                                 temperature=args.temperature, timeout_s=args.timeout, max_retries=args.max_retries)
        editor = LLMEditor(config, CooccurrenceStats.from_dataset(dataset))
    fixed_prompts = {"short": CAPTION_PROMPTS[0], "detailed": CAPTION_PROMPTS[1]}
    prompt_for_caption = (caption_prompt_by_index if args.prompt == "by-index"
                          else lambda index, caption: fixed_prompts[args.prompt])
    result = generate_preference_pairs(dataset, editor, seed=args.seed, kinds=args.kinds, per_image=args.per_image,
                                       prompt_for_caption=prompt_for_caption, faithful_only=not args.keep_unfaithful,
                                       progress=not args.no_progress)
    write_preferences(args.out, result.records, fmt=args.format)
    log.info("%s/%s: %s\nwrote %s (%s format)", args.data, args.split, result.summary(), args.out, args.format)


if __name__ == "__main__":
    main()
