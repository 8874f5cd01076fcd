"""POVID-style dispreferred answers: ground-truth captions rewritten to contain one hallucination.

* :mod:`.cooccurrence`: P(B present | A present) from a dataset's annotations, for choosing the
  plausible absent object;
* :mod:`.injector`: :class:`RuleBasedEditor`, co-occurrence / attribute / relation edits from
  annotations and caption text, and the :class:`CaptionEditor` interface;
* :mod:`.llm_editor`: :class:`LLMEditor`, the same edits asked of an OpenAI-compatible endpoint;
* :mod:`.pairs`: :func:`build_preference_pairs`, preference records from a dataset and an editor.

CLI::

    python -m halluremedy.generate --data data/scenes --split train --out pairs.jsonl --seed 0
"""

from halluremedy.generate.cooccurrence import CooccurrenceStats
from halluremedy.generate.injector import (
                                           COOCCUR_MODES,
                                           EDIT_KINDS,
                                           CaptionEditor,
                                           CooccurMode,
                                           EditKind,
                                           EditLexicon,
                                           RuleBasedEditor,
)
from halluremedy.generate.llm_editor import LLMEditError, LLMEditor, LLMEditorConfig
from halluremedy.generate.pairs import (
                                           PairGeneration,
                                           build_preference_pairs,
                                           caption_prompt_by_index,
                                           generate_preference_pairs,
)

__all__ = ["COOCCUR_MODES", "EDIT_KINDS", "CaptionEditor", "CooccurMode", "CooccurrenceStats", "EditKind",
           "EditLexicon", "LLMEditError", "LLMEditor", "LLMEditorConfig", "PairGeneration", "RuleBasedEditor",
           "build_preference_pairs", "caption_prompt_by_index", "generate_preference_pairs"]
