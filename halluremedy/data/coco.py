"""COCO-format datasets: one loader for real COCO 2014 and for the procedural scene world.

On-disk layout (the one COCO itself uses)::

    ROOT/annotations/instances_{split}.json   images, categories, annotations (bbox [x, y, w, h])
    ROOT/annotations/captions_{split}.json    optional: {"images": [...], "annotations": [{"image_id", "caption"}]}
    ROOT/{split}/{file_name}                  image files

Two optional, non-standard fields are understood (COCO tools ignore them):
  * ``annotations[i]["attributes"]``: ``{"color": "red", "size": "small", ...}``;
  * ``categories[i]["synonyms"]``: surface words that name the class, used by CHAIR parsing.
    Real COCO has none; evaluation then uses the built-in COCO synonym table.

Every error names the file, the record index and the field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from PIL import Image
from tqdm.auto import tqdm

from halluremedy.errors import ConfigError, DatasetError

__all__ = ["CocoObject", "CocoImage", "CocoDataset", "DatasetError", "read_text", "write_json_atomic",
           "write_text_atomic", "write_coco"]

# What PIL raises for a file that is not a readable image (truncated, corrupt, not an image at all).
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class CocoObject:
    """One annotated object instance."""

    category: str
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CocoImage:
    """One image with its objects and reference captions."""

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    objects: tuple[CocoObject, ...]
    captions: tuple[str, ...]

    @property
    def categories(self) -> set[str]:
        """Distinct category names annotated in this image."""
        return {o.category for o in self.objects}


@dataclass
class CocoDataset:
    """A loaded COCO-format split. ``images`` keep the order of the instances file."""

    root: Path
    split: str
    images: list[CocoImage]
    categories: list[str]  # names, in category-id order
    synonyms: dict[str, list[str]] | None  # category -> surface words, when the data ships them
    info: dict = field(default_factory=dict)  # the instances file's COCO "info" (how a generator made it)

    def __len__(self) -> int:
        return len(self.images)

    def by_id(self, image_id: int) -> CocoImage:
        return self._index[image_id]

    def head(self, n: int) -> CocoDataset:
        """The same split cut to its first ``n`` images."""
        if not 0 <= n <= len(self.images):
            raise ValueError(f"{self.root}/{self.split}: cannot take the first {n} of {len(self.images)} images")
        return dataclasses.replace(self, images=self.images[:n])

    def __post_init__(self) -> None:
        self._index = {im.image_id: im for im in self.images}

    def load_image(self, image: CocoImage) -> Image.Image:
        """Open an image as RGB; a missing or unreadable file raises DatasetError naming it."""
        try:
            with Image.open(image.path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"{image.path}: image file of image_id={image.image_id} does not exist") from None
        except _IMAGE_ERRORS as e:
            raise DatasetError(f"{image.path}: cannot read image of image_id={image.image_id}: {e}") from None

    def check_sample_size(self, n: int, option: str) -> None:
        """Refuse (ConfigError naming ``option``) to sample ``n`` images from a split that has fewer."""
        if n > len(self.images):
            raise ConfigError(f"option '{option}': {n} images asked for, but split '{self.split}' of {self.root} has "
                              f"{len(self.images)}; pass at most {len(self.images)}")

    @property
    def instances_path(self) -> Path:
        return self.root / "annotations" / f"instances_{self.split}.json"

    def verify_images(self, *, progress: bool = False) -> None:
        """Open and decode every image file of the split, so that a missing, truncated or corrupt one
        is found before any training, not when evaluation reaches it. Raises DatasetError naming the
        instances record (``images[k]``), its ``file_name`` and the file."""
        order = {iid: k for k, iid in enumerate(im.image_id for im in self.images)}
        bar = None if progress else True  # None: a bar on a terminal only, none in logs
        for im in tqdm(self.images, desc=f"checking {self.split} images", disable=bar, leave=False):
            where = f"{self.instances_path}: images[{order[im.image_id]}] (id {im.image_id}) field 'file_name'"
            try:
                with Image.open(im.path) as f:
                    f.load()
            except FileNotFoundError:
                raise DatasetError(f"{where}: {im.path} does not exist") from None
            except _IMAGE_ERRORS as e:
                raise DatasetError(f"{where}: {im.path} is not a readable image: {one_line_reason(e)}") from None

    @classmethod
    def load(cls, root: str | os.PathLike, split: str, *, require_captions: bool = False,
             check_files: bool = True) -> CocoDataset:
        """Load ``ROOT/annotations/{instances,captions}_{split}.json`` and index ``ROOT/{split}/``."""
        root = Path(root)
        inst_path = root / "annotations" / f"instances_{split}.json"
        cap_path = root / "annotations" / f"captions_{split}.json"
        inst = _read_json(inst_path)
        for key in ("images", "categories", "annotations"):
            if not isinstance(inst.get(key), list):
                raise DatasetError(f"{inst_path}: missing or non-list top-level field '{key}'")

        cat_names: dict[int, str] = {}
        synonyms: dict[str, list[str]] = {}
        for i, c in enumerate(inst["categories"]):
            cid = _field(c, "id", int, inst_path, "categories", i)
            name = _field(c, "name", str, inst_path, "categories", i)
            cat_names[cid] = name
            if "synonyms" in c:
                syn = c["synonyms"]
                if not (isinstance(syn, list) and all(isinstance(s, str) and s for s in syn)):
                    raise DatasetError(f"{inst_path}: categories[{i}] field 'synonyms' must be a list of strings")
                synonyms[name] = list(syn)

        meta: dict[int, tuple[str, int, int]] = {}
        for i, im in enumerate(inst["images"]):
            iid = _field(im, "id", int, inst_path, "images", i)
            if iid in meta:
                raise DatasetError(f"{inst_path}: images[{i}] field 'id' duplicates image id {iid}")
            meta[iid] = (_field(im, "file_name", str, inst_path, "images", i),
                         _field(im, "width", int, inst_path, "images", i),
                         _field(im, "height", int, inst_path, "images", i))

        objects: dict[int, list[CocoObject]] = {iid: [] for iid in meta}
        for i, a in enumerate(inst["annotations"]):
            iid = _field(a, "image_id", int, inst_path, "annotations", i)
            cid = _field(a, "category_id", int, inst_path, "annotations", i)
            if iid not in meta:
                raise DatasetError(f"{inst_path}: annotations[{i}] field 'image_id' refers to unknown image {iid}")
            if cid not in cat_names:
                raise DatasetError(f"{inst_path}: annotations[{i}] field 'category_id' refers to unknown category {cid}")
            bbox = a.get("bbox", [0, 0, 0, 0])
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise DatasetError(f"{inst_path}: annotations[{i}] field 'bbox' must be [x, y, w, h]")
            attrs = a.get("attributes", {})
            if not isinstance(attrs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
                raise DatasetError(f"{inst_path}: annotations[{i}] field 'attributes' must map strings to strings")
            objects[iid].append(CocoObject(cat_names[cid], tuple(float(v) for v in bbox), dict(attrs)))

        captions: dict[int, list[str]] = {iid: [] for iid in meta}
        if cap_path.exists():
            caps = _read_json(cap_path)
            if not isinstance(caps.get("annotations"), list):
                raise DatasetError(f"{cap_path}: missing or non-list top-level field 'annotations'")
            for i, a in enumerate(caps["annotations"]):
                iid = _field(a, "image_id", int, cap_path, "annotations", i)
                text = _field(a, "caption", str, cap_path, "annotations", i)
                if iid not in meta:
                    raise DatasetError(f"{cap_path}: annotations[{i}] field 'image_id' refers to unknown image {iid}")
                if not text.strip():
                    raise DatasetError(f"{cap_path}: annotations[{i}] field 'caption' is empty")
                captions[iid].append(text)
        elif require_captions:
            raise DatasetError(f"{cap_path}: captions file does not exist")

        image_dir = root / split
        images = []
        for k, (iid, (fname, w, h)) in enumerate(meta.items()):
            if not fname or "\x00" in fname:
                raise DatasetError(f"{inst_path}: images[{k}] field 'file_name' must be a non-empty file name, "
                                   f"got {fname!r}")
            path = image_dir / fname
            if check_files and not path.is_file():
                raise DatasetError(f"{inst_path}: image {iid} file_name '{fname}' not found at {path}")
            images.append(CocoImage(iid, fname, path, w, h, tuple(objects[iid]), tuple(captions[iid])))
        categories = [cat_names[c] for c in sorted(cat_names)]
        info = inst.get("info", {})
        if not isinstance(info, dict):
            raise DatasetError(f"{inst_path}: top-level field 'info' must be an object")
        return cls(root, split, images, categories, synonyms or None, info)


def one_line_reason(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_text(path: str | os.PathLike) -> str:
    """The whole file as text, strictly UTF-8 (a leading BOM dropped). Raises DatasetError naming the
    file for a missing or unreadable file, and file, line and byte offset for bytes that are not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file does not exist") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DatasetError(f"{path}:{line}: not valid UTF-8 at byte offset {e.start} (byte 0x{data[e.start]:02x}: "
                           f"{e.reason}); save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def _read_json(path: Path) -> dict:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:  # an integer of > 4300 digits, nesting too deep
        raise DatasetError(f"{path}: unreadable JSON: {one_line_reason(e)}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be a JSON object")
    return data


def _field(record: object, name: str, kind: type, path: Path, table: str, index: int):
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: {table}[{index}] is not an object")
    if name not in record:
        raise DatasetError(f"{path}: {table}[{index}] lacks field '{name}'")
    value = record[name]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise DatasetError(f"{path}: {table}[{index}] field '{name}' must be {kind.__name__}, got {value!r}")
    return value


def write_text_atomic(path: str | os.PathLike, write: Callable[[TextIO], object]) -> None:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path``: a crash or an
    error leaves the old file or the new one, never half of one, and no temporary file. The file gets
    the mode a plain ``open(path, "w")`` would (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: object, *, indent: int | None = None) -> None:
    """Write JSON through a temporary file + rename, so a crash never leaves half a file."""
    write_text_atomic(path, lambda f: json.dump(obj, f, indent=indent))


def write_coco(root: str | os.PathLike, split: str, images: Sequence[tuple[str, int, int]],
               categories: Sequence[str], annotations: Iterable[tuple[int, str, Sequence[float], dict[str, str]]],
               captions: Iterable[tuple[int, str]], synonyms: dict[str, list[str]] | None = None,
               info: dict | None = None) -> None:
    """Write the two annotation files of a split (image files are the caller's); ``info``, when given, is
    the instances file's COCO "info" object.

    ``images[i] = (file_name, width, height)`` gets image id ``i + 1``; ``annotations`` yields
    ``(image_id, category, bbox, attributes)``; ``captions`` yields ``(image_id, caption)``.
    """
    root = Path(root)
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    img_records = [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(images)]
    cat_records = []
    for name in categories:
        rec = {"id": cat_id[name], "name": name, "supercategory": "object"}
        if synonyms is not None:
            rec["synonyms"] = list(synonyms[name])
        cat_records.append(rec)
    ann_records = []
    for k, (iid, cat, bbox, attrs) in enumerate(annotations):
        x, y, w, h = (float(v) for v in bbox)
        ann_records.append({"id": k + 1, "image_id": iid, "category_id": cat_id[cat], "bbox": [x, y, w, h],
                            "area": w * h, "iscrowd": 0, "attributes": dict(attrs)})
    cap_records = [{"id": k + 1, "image_id": iid, "caption": text} for k, (iid, text) in enumerate(captions)]
    ann_dir = root / "annotations"
    write_json_atomic(ann_dir / f"instances_{split}.json", {**({"info": info} if info is not None else {}),
                      "images": img_records, "categories": cat_records, "annotations": ann_records})
    write_json_atomic(ann_dir / f"captions_{split}.json", {"images": img_records, "annotations": cap_records})
