"""Evaluate a model on a COCO-format split: CHAIR on generated captions, POPE in three settings.

``evaluate`` returns a JSON-serialisable dict; ``format_table`` renders it for a terminal.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from halluremedy.data.coco import CocoDataset
from halluremedy.errors import ConfigError, one_line
from halluremedy.eval.chair import MentionParser, ObjectVocabulary, chair, coco_vocabulary, ground_truth_objects
from halluremedy.eval.pope import build_pope, false_yes_by_source, parse_pope_answer, pope_metrics
from halluremedy.eval.sources import cooccurrence_partners, hallucination_sources, source_row
from halluremedy.models.generate import Decoding, generate_answers
from halluremedy.prompts import DETAILED_CAPTION_PROMPT, POPE_SUFFIX

POPE_SETTINGS = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class EvalConfig:
    """``chair_images`` / ``pope_images``: at most that many images of the split (POPE: of its images with
    >= 3 classes); the result's ``images`` records how many were used. Front doors refuse a
    ``--chair-images`` larger than the split (``CocoDataset.check_sample_size``)."""

    chair_images: int = 500
    pope_images: int = 500
    seed: int = 0
    caption_prompt: str = DETAILED_CAPTION_PROMPT
    caption_decodings: Sequence[Decoding] = field(default_factory=lambda: (Decoding(0.0, 64),))
    pope_settings: Sequence[str] = POPE_SETTINGS
    chair_compat: str = "halluremedy"  # or "reference": the original CHAIR parser (real COCO only)
    batch_size: int = 64
    progress: bool = True

    @classmethod
    def greedy_and_sampled(cls, images: int, seed: int) -> EvalConfig:
        """The recipes' evaluation: ``images`` images for CHAIR and POPE, captions greedy and sampled
        at T=1 (64 new tokens), every draw from ``seed``."""
        return cls(chair_images=images, pope_images=images, seed=seed,
                   caption_decodings=(Decoding(0.0, 64, seed), Decoding(1.0, 64, seed)))

    def __post_init__(self) -> None:
        if self.chair_images < 1 or self.pope_images < 0 or self.batch_size < 1:
            raise ValueError(f"EvalConfig needs chair_images >= 1, pope_images >= 0 and batch_size >= 1; got "
                             f"{self.chair_images}, {self.pope_images}, {self.batch_size}")


def object_vocabulary(dataset: CocoDataset, compat: str = "halluremedy") -> MentionParser:
    """The dataset's own synonym table (scene world) or the built-in COCO one of ``compat`` (real COCO).

    Raises ValueError for an unknown ``compat``, and for ``compat="reference"`` on a dataset whose
    categories are not COCO's: the original parser knows the 80 COCO classes only.
    """
    vocab = coco_vocabulary(compat)
    if compat == "reference":
        unknown = sorted(set(dataset.categories) - set(vocab.classes))
        if unknown:
            raise ValueError(f"{dataset.root}:{dataset.split}: CHAIR compat 'reference' knows the 80 COCO classes "
                             f"only; this split has {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        return vocab
    return ObjectVocabulary.from_synonyms(dataset.synonyms) if dataset.synonyms else vocab


def present_words(dataset: CocoDataset) -> dict[str, list[str]]:
    """Image file name -> every surface phrase that CHAIR reads as a class annotated in it (the
    dataset's synonym table, or the built-in COCO one): what POVID's ``noise_positions`` rule
    "present" is given (``run_preference_stage(present_words=...)``)."""
    vocab = object_vocabulary(dataset)
    return {im.file_name: sorted({w for o in im.objects for w in vocab.surface_forms(o.category)})
            for im in dataset.images}


def check_evaluation(dataset: CocoDataset, cfg: EvalConfig, *, chair_option: str = "--chair-images",
                     pope_option: str = "--pope-images", compat_option: str = "--chair-compat") -> None:
    """Refuse, before any model loads, what :func:`evaluate` would stop at once the captions are made:
    more CHAIR images than the split has, a CHAIR parser that does not know its classes, a split POPE
    cannot ask about. ConfigError names the front door's option."""
    dataset.check_sample_size(cfg.chair_images, chair_option)
    try:
        object_vocabulary(dataset, cfg.chair_compat)
    except ValueError as e:
        raise ConfigError(f"option '{compat_option}': {one_line(e)}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fewer eligible images than asked": evaluate itself warns
        for setting in cfg.pope_settings:
            try:
                build_pope(dataset, setting, n_images=cfg.pope_images, seed=cfg.seed)
            except ValueError as e:
                raise ConfigError(f"option '{pope_option}': {one_line(e)}; 0 skips POPE") from None


def evaluate(model, processor, dataset: CocoDataset, cfg: EvalConfig = EvalConfig()) -> dict:
    vocab = object_vocabulary(dataset, cfg.chair_compat)
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.chair_images, len(dataset))
    chair_images = [dataset.images[i] for i in sorted(rng.choice(len(dataset), size=n, replace=False))]
    pil = [dataset.load_image(im) for im in chair_images]
    truth = {im.image_id: ground_truth_objects(im, vocab) for im in chair_images}
    partners = cooccurrence_partners(im.categories for im in dataset.images)  # from the split's annotations
    result: dict = {"dataset": f"{dataset.root}:{dataset.split}", "config": _jsonable(asdict(cfg)),
                    "chair_signature": vocab.signature, "images": {"chair": n, "pope": 0}, "partners": partners,
                    "chair": {}, "pope": {}}
    for dec in cfg.caption_decodings:
        captions = generate_answers(model, processor, pil, [cfg.caption_prompt] * n, dec, batch_size=cfg.batch_size,
                                    progress=f"captions {dec.name}" if cfg.progress else None)
        scores = chair(dict(zip(truth, captions)), truth, vocab).to_dict()
        scores["sources"] = hallucination_sources(scores["per_caption"], partners)  # prior vs misperception
        scores["examples"] = [{"image_id": i, "caption": c} for i, c in list(zip(truth, captions))[:5]]
        result["chair"][dec.name] = scores
    images_by_id = {}
    for setting in cfg.pope_settings:
        questions = build_pope(dataset, setting, n_images=cfg.pope_images, seed=cfg.seed)
        for q in questions:
            if q.image_id not in images_by_id:
                images_by_id[q.image_id] = dataset.load_image(dataset.by_id(q.image_id))
        answers = generate_answers(model, processor, [images_by_id[q.image_id] for q in questions],
                                   [q.question + POPE_SUFFIX for q in questions], Decoding(0.0, 4),
                                   batch_size=cfg.batch_size, progress=f"POPE {setting}" if cfg.progress else None)
        predictions = [parse_pope_answer(a) for a in answers]
        result["pope"][setting] = pope_metrics(predictions, [q.label for q in questions])
        present = {i: dataset.by_id(i).categories for i in {q.image_id for q in questions}}
        result["pope"][setting]["false_yes"] = false_yes_by_source(questions, predictions, present, partners)
    result["images"]["pope"] = len(images_by_id)  # the same images in every setting
    return result


def evaluate_saved(model_dir: str | os.PathLike, dataset: CocoDataset, cfg: EvalConfig, out: str | os.PathLike,
                   **record: object) -> dict:
    """Load the model saved in ``model_dir``, :func:`evaluate` it on ``dataset``, write the result (with
    ``record``'s entries, e.g. ``recipe=``) to ``out`` atomically and return it."""
    from halluremedy.data.coco import write_json_atomic
    from halluremedy.models.llava import load_model

    model, processor = load_model(model_dir)
    result = {**evaluate(model, processor, dataset, cfg), **record}
    write_json_atomic(out, result, indent=2)
    return result


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def summary_row(result: dict) -> dict[str, float]:
    """Flat headline numbers: CHAIR per decoding, POPE F1/accuracy/yes-ratio per setting."""
    row: dict[str, float] = {}
    for dec, s in result["chair"].items():
        tag = "greedy" if dec == "greedy" else "sampled"
        row[f"CHAIR_s/{tag}"] = s["chair_s"]
        row[f"CHAIR_i/{tag}"] = s["chair_i"]
        row[f"recall/{tag}"] = s["recall"]
        row[f"len/{tag}"] = s["mean_length"]
        if "sources" in s:
            row.update(source_row(s["sources"], tag))
    for setting, m in result["pope"].items():
        row[f"POPE-{setting[:3]}/F1"] = m["f1"]
        row[f"POPE-{setting[:3]}/acc"] = m["accuracy"]
        row[f"POPE-{setting[:3]}/yes"] = m["yes_ratio"]
    return row


def format_table(rows: dict[str, dict[str, float]], chair_signature: str | None = None) -> str:
    """Markdown table: one row per model/run name, one column per headline metric; with
    ``chair_signature`` (``result["chair_signature"]``), a line under it names how CHAIR was computed."""
    cols = sorted({c for r in rows.values() for c in r}, key=column_order)
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.3f}" if c in r else "" for c in cols) + " |")
    if chair_signature:
        lines += ["", f"CHAIR signature: {chair_signature}"]
    return "\n".join(lines)


def column_order(col: str) -> tuple[int, str]:
    order = ["CHAIR_s", "CHAIR_i", "recall", "len", "POPE-ran", "POPE-pop", "POPE-adv"]
    return next((k for k, p in enumerate(order) if col.startswith(p)), len(order)), col
