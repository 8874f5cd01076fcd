"""CHAIR for captions made anywhere: ``halluremedy chair --captions FILE.jsonl --out OUT.json``.

Input is JSON Lines, one caption a line: ``{"image_id": 42, "caption": "A dog on a couch."}``
plus the image's ground truth, from one of two sources:

* ``ground_truth`` on every line: a list of COCO class names (the image's objects, final);
* COCO annotations (``annotations=ROOT, split=...``, the layout
  :meth:`~halluremedy.data.coco.CocoDataset.load` reads, e.g. ``ROOT/annotations/instances_val2014.json``
  and ``captions_val2014.json``): annotated categories united with the objects parsed from the
  image's reference captions, in the same compat mode as the generated captions, as the original
  CHAIR code does.

Other fields on a line are ignored; blank lines are skipped. Each image is captioned once. The
default mode is ``"reference"`` (numbers comparable with published tables); the output names the
mode in its ``signature``.

Every input error raises :class:`~halluremedy.data.coco.DatasetError` with a one-line message
naming file, line and field: ``captions.jsonl:7: field 'caption': must be a string``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from halluremedy.data.coco import CocoDataset, DatasetError
from halluremedy.data.conversation import read_jsonl
from halluremedy.eval.chair import MentionParser, chair, coco_vocabulary, ground_truth_objects
from halluremedy.eval.run import object_vocabulary

__all__ = ["CaptionLine", "read_caption_lines", "score_captions"]


@dataclass(frozen=True)
class CaptionLine:
    """One input line: its 1-based line number, image id, caption and ground truth (None: from annotations)."""

    line: int
    image_id: int
    caption: str
    ground_truth: tuple[str, ...] | None


def read_caption_lines(path: str | os.PathLike, classes: tuple[str, ...], *,
                       ground_truth_given: bool) -> list[CaptionLine]:
    """Parse and check a captions JSONL file.

    ``ground_truth_given``: every line must carry ``ground_truth`` (a list of names in
    ``classes``); otherwise no line may (the ground truth comes from annotations).
    Raises DatasetError naming file and line for a missing file, bytes that are not UTF-8, a
    line that is not a JSON object, a missing or mistyped field, an unknown class, a repeated
    image id, or a file without captions.
    """
    path = Path(path)
    known = set(classes)
    records: list[CaptionLine] = []
    first_line: dict[int, int] = {}
    for where, record in read_jsonl(path):  # strict UTF-8, JSON per line: errors name file and line
        number = int(where.rsplit(":", 1)[1])
        if not isinstance(record, dict):
            raise DatasetError(f"{where}: must be a JSON object")
        image_id = _field(record, "image_id", where)
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise DatasetError(f"{where}: field 'image_id': must be an integer")
        caption = _field(record, "caption", where)
        if not isinstance(caption, str):
            raise DatasetError(f"{where}: field 'caption': must be a string")
        if image_id in first_line:
            raise DatasetError(f"{where}: field 'image_id': image {image_id} is already captioned on line "
                               f"{first_line[image_id]}")
        first_line[image_id] = number
        truth = None
        if ground_truth_given:
            truth = _field(record, "ground_truth", where, hint=" (give it on every line, or give annotations)")
            if not isinstance(truth, list) or not all(isinstance(name, str) for name in truth):
                raise DatasetError(f"{where}: field 'ground_truth': must be a list of strings")
            unknown = [name for name in truth if name not in known]
            if unknown:
                raise DatasetError(f"{where}: field 'ground_truth': {unknown[0]!r} is not a COCO class")
            truth = tuple(truth)
        elif "ground_truth" in record:
            raise DatasetError(f"{where}: field 'ground_truth': given together with annotations; use one source "
                               "of ground truth")
        records.append(CaptionLine(number, image_id, caption, truth))
    if not records:
        raise DatasetError(f"{path}: no captions")
    return records


def _field(record: dict, name: str, where: str, hint: str = ""):
    if name not in record:
        raise DatasetError(f"{where}: field '{name}': missing{hint}")
    return record[name]


def score_captions(captions: str | os.PathLike, *, annotations: str | os.PathLike | None = None,
                   split: str = "val2014", compat: str = "reference",
                   reference_revision: str | None = None) -> dict:
    """CHAIR of a captions JSONL file (see the module docstring) as a plain-JSON dict.

    Keys: ``signature``, ``compat``, ``captions`` (the path), ``ground_truth`` (``"per line"`` or
    ``"ROOT:SPLIT"``), the aggregates of :class:`~halluremedy.eval.chair.ChairResult`
    (``chair_s``, ``chair_i``, ``recall``, ``mean_length`` and counts), and ``per_caption``: per
    line ``image_id``, ``caption``, ``mentions`` (class per mention, caption order, repeats kept),
    ``mention_words`` (the words of each), ``hallucinated`` (class per mention not in the ground
    truth) and ``ground_truth`` (sorted).

    Raises DatasetError for bad input (file, line and field named) and ValueError for an unknown
    ``compat`` or ``reference_revision``.
    """
    vocab: MentionParser = coco_vocabulary(compat, reference_revision=reference_revision)
    if annotations is None:
        lines = read_caption_lines(captions, vocab.classes, ground_truth_given=True)
        truth = {c.image_id: set(c.ground_truth) for c in lines}
        source = "per line"
    else:
        dataset = CocoDataset.load(annotations, split, check_files=False)
        if compat == "halluremedy":
            vocab = object_vocabulary(dataset)  # the data's own synonym table when it ships one
        unknown = sorted(set(dataset.categories) - set(vocab.classes))
        if unknown:
            raise DatasetError(f"{dataset.root}/annotations/instances_{split}.json: categories {unknown[:5]} are "
                               f"not classes of the {compat} CHAIR vocabulary (the reference knows COCO's 80)")
        lines = read_caption_lines(captions, vocab.classes, ground_truth_given=False)
        truth = {}
        for c in lines:
            try:
                image = dataset.by_id(c.image_id)
            except KeyError:
                raise DatasetError(f"{captions}:{c.line}: field 'image_id': image {c.image_id} is not in "
                                   f"{dataset.root} split {split}") from None
            truth[c.image_id] = ground_truth_objects(image, vocab)
        source = f"{dataset.root}:{split}"
    result = chair({c.image_id: c.caption for c in lines}, truth, vocab)
    out = {"signature": result.signature, "compat": vocab.compat, "captions": str(captions), "ground_truth": source}
    out.update({k: v for k, v in result.to_dict().items() if k not in ("signature", "per_caption")})
    out["per_caption"] = [{
        "image_id": c.image_id,
        "caption": c.caption,
        "mentions": [m.category for m in c.mentions],
        "mention_words": [m.text for m in c.mentions],
        "hallucinated": [m.category for m in c.hallucinated],
        "ground_truth": list(c.ground_truth),
    } for c in result.per_caption]
    return out
