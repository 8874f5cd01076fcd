"""Diagnose a model's own hallucinations (DFTG step 1) on a split with annotations, e.g.

    halluremedy diagnose --model runs/base/model --data runs/remedy/diag_scenes --split diag
    halluremedy diagnose --model /ckpt/llava-1.5-7b-hf --data /data/coco --split train2014 --images 500 \\
        --device cuda --out runs/diagnose/llava7b

Detailed and short captions, existence and attribute probes, compared with the annotations: per-class
false-positive / false-negative rates, attribute confusions, trigger pairs and misnamings. Writes
``OUT/report.md`` (read it first), ``OUT/diagnosis.json`` and ``OUT/worst_classes.png``. Diagnose on a
split you do not evaluate on: the diagnosis is meant to steer training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from halluremedy.config import check_device, check_model_dir, check_range, option, required, section
from halluremedy.data.coco import CocoDataset
from halluremedy.diagnose import Diagnosis, ProbeConfig, diagnose, write_report
from halluremedy.models.llava import load_model
from halluremedy.recipes.sections import assemble

DIAGNOSE_ROOT = Path("runs") / "diagnose"  # where `halluremedy diagnose` writes without --out


@dataclass(frozen=True)
class ProbeSection:
    """What the model is asked: captions of this many images, and their existence and attribute probes."""

    images: int = option(ProbeConfig.images, "images of the split diagnosed (drawn with --seed)")
    seed: int = option(ProbeConfig.seed, "seed of the image draw and the probes")
    existence: bool = option(ProbeConfig.existence, "also ask yes/no existence questions")
    max_new_tokens: int = option(ProbeConfig.max_new_tokens, "longest caption, in tokens")
    batch_size: int = option(ProbeConfig.batch_size, "prompts per generation batch")

    def __post_init__(self) -> None:
        for name in ("images", "max_new_tokens", "batch_size"):
            check_range(self, name, ge=1)
        check_range(self, "seed", ge=0)


@dataclass(frozen=True)
class DiagnoseConfig:
    model: str = required("LLaVA checkpoint directory (tiny or llava-1.5-*-hf)")
    data: str = required("COCO-format root (annotations/ and SPLIT/ inside)")
    split: str = required("split diagnosed: annotations/instances_SPLIT.json (not the one you evaluate on)")
    device: str = option("cpu", "cpu | cuda | cuda:N")
    out: str = option("", f"output directory; empty: {DIAGNOSE_ROOT}/MODELNAME_SPLIT")
    probe: ProbeSection = section(ProbeSection())

    def __post_init__(self) -> None:
        check_device(self)

    @property
    def out_dir(self) -> Path:
        model = Path(self.model).resolve()
        name = f"{model.parent.name}_{model.name}" if model.name == "model" else model.name
        return Path(self.out) if self.out else DIAGNOSE_ROOT / f"{name}_{self.split}"


def run_diagnosis(cfg: DiagnoseConfig) -> Diagnosis:
    """Diagnose, write the report into ``cfg.out_dir`` and return the diagnosis."""
    model_dir = check_model_dir(cfg.model)
    dataset = CocoDataset.load(cfg.data, cfg.split)
    dataset.check_sample_size(cfg.probe.images, "--images")
    dataset.verify_images(progress=True)
    model, processor = load_model(model_dir, device=cfg.device)
    result = diagnose(model, processor, dataset, assemble(ProbeConfig, cfg.probe, progress=True),
                      model_name=model_dir.name)
    paths = write_report(result, cfg.out_dir)
    print(f"worst classes: {[c.category for c in result.worst_classes(3)]}; report: {paths['markdown']}")
    return result
