"""Pretrain the tiny vision tower on scene images before any language training, as LLaVA has CLIP.

LLaVA-1.5's encoder is pretrained (CLIP) and frozen throughout; it names most objects correctly per
mention (CHAIR_i 0.127) and hallucinates from its language prior. A tiny ViT trained only through
captioning stays half-blind (the ``scene_base`` asset: 85% of its hallucinations are present shapes
named as another class). So the tower is pretrained first, on its own, and saved as a
``CLIPVisionModel`` directory that loads alone (``CLIPVisionModel.from_pretrained(DIR)``).

Objective: supervised multi-label targets, read by one linear layer from every patch token of the
layer LLaVA takes its features from (``feature_layer``, -2 as in llava-1.5), max-pooled over the
patches: per class "present", per (class, colour) and per (class, size) "present". Chosen over a
CLIP-style contrastive loss by measurement of what a tiny tower on one CPU core reaches in minutes
(see ``halluremedy/assets/scene_base_llava/README.md``); the max-pool makes each patch token carry
what is drawn on and around it, which is what the projector later reads. Diffusion-noise
augmentation (a ``noise_share`` of the images at a step uniform in ``[0, noise_max_step)``, POVID's
schedule) makes it partly robust to noise, as CLIP is.

Scenes are rendered in memory from a seed (``[scene_seed, i, 0]`` per image, the scene world's own
scheme), never written to disk: 40000 take ~15 s.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModel
from vlm_kernels import diffusion_noise

from halluremedy.data.scenes.render import render
from halluremedy.data.scenes.world import Scene, SceneConfig, sample_scene
from halluremedy.models.llava import CLIP_MEAN, CLIP_STD

__all__ = ["VisionPretrainSpec", "SceneTargets", "render_scenes", "scene_targets", "build_tower", "TowerHead",
           "pretrain_tower", "load_tower", "detection_report", "NOISE_STEPS"]

NOISE_STEPS = (0, 200, 500, 800)  # the noise steps the report reads (POVID uses 500)
HEAD_FILE = "probe_head.safetensors"


@dataclass(frozen=True)
class VisionPretrainSpec:
    """Tower geometry (a ``CLIPVisionConfig``) and its pretraining recipe."""

    image_size: int = 32
    patch_size: int = 8
    hidden: int = 64
    layers: int = 3
    heads: int = 4
    feature_layer: int = -2  # hidden_states index the head reads (LLaVA's vision_feature_layer)
    steps: int = 5000  # 2000 stop on the plateau's far side (large-object min 0.59); 5000 reach 0.96
    batch_size: int = 128
    lr: float = 2e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    scenes: int = 40000
    scene_seed: int = 11  # a stream of its own: not the LM's training scenes, not any held-out split
    noise_share: float = 0.3  # measured: 0.3 x 5000 steps meets the bar (see assets/scene_tower)
    noise_max_step: int = 800
    seed: int = 0
    # also train the class token (same targets, its own linear head): a global summary token the LM
    # can read with the "full" feature strategy (class token kept), for yes/no questions
    cls_head: bool = False

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size or self.hidden % self.heads:
            raise ValueError(f"VisionPretrainSpec: patch_size must divide image_size and heads must divide hidden: {self}")
        if min(self.steps, self.batch_size, self.scenes, self.layers) < 1 or self.lr <= 0:
            raise ValueError(f"VisionPretrainSpec needs steps, batch_size, scenes, layers >= 1 and lr > 0: {self}")
        if not 0.0 <= self.noise_share <= 1.0 or self.noise_max_step < 1:
            raise ValueError(f"VisionPretrainSpec needs noise_share in [0, 1] and noise_max_step >= 1: {self}")
        if not -self.layers <= self.feature_layer <= self.layers or self.feature_layer == 0:
            raise ValueError(f"VisionPretrainSpec.feature_layer={self.feature_layer} must name one of the "
                             f"{self.layers} layers' outputs")

    def vision_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(hidden_size=self.hidden, intermediate_size=4 * self.hidden,
                                num_hidden_layers=self.layers, num_attention_heads=self.heads,
                                image_size=self.image_size, patch_size=self.patch_size, projection_dim=self.hidden)


@dataclass(frozen=True)
class SceneTargets:
    """Label layout: ``classes`` presence, then (class, colour), then (class, size), in that order."""

    classes: tuple[str, ...]
    colors: tuple[str, ...]
    sizes: tuple[str, ...] = ("small", "large")

    @property
    def n(self) -> int:
        return len(self.classes) * (1 + len(self.colors) + len(self.sizes))

    def encode(self, scene: Scene) -> np.ndarray:
        y = np.zeros(self.n, dtype=np.float32)
        nc, ncol = len(self.classes), len(self.colors)
        for o in scene.objects:
            c = self.classes.index(o.category)
            y[c] = 1
            y[nc + c * ncol + self.colors.index(o.color)] = 1
            y[nc + nc * ncol + c * len(self.sizes) + self.sizes.index(o.size)] = 1
        return y


def render_scenes(n: int, seed: int, cfg: SceneConfig = SceneConfig(), start: int = 0
                  ) -> tuple[torch.Tensor, list[Scene]]:
    """Scenes ``start .. start + n`` of the stream ``seed`` (scene i from ``[seed, i, 0]``, as
    ``make_dataset`` draws them) as (n, 3, H, W) uint8 pixels and the scenes themselves."""
    scenes = [sample_scene(cfg, np.random.default_rng([seed, i, 0])) for i in range(start, start + n)]
    pixels = np.stack([np.asarray(render(s, cfg), dtype=np.uint8) for s in scenes]) if scenes else \
        np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), scenes


def scene_targets(scenes: list[Scene], targets: SceneTargets) -> torch.Tensor:
    return torch.from_numpy(np.stack([targets.encode(s) for s in scenes]))


def build_tower(spec: VisionPretrainSpec) -> CLIPVisionModel:
    torch.manual_seed(spec.seed)
    return CLIPVisionModel(spec.vision_config())


class TowerHead(torch.nn.Module):
    """Linear multi-label head on every patch token of ``feature_layer``, max-pooled over patches
    (and, with ``cls_head``, a second one on the class token of the same layer)."""

    def __init__(self, hidden: int, n_targets: int, feature_layer: int = -2, cls_head: bool = False):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, n_targets)
        self.cls_linear = torch.nn.Linear(hidden, n_targets) if cls_head else None
        self.feature_layer = feature_layer

    def both(self, tower: CLIPVisionModel, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.feature_layer]
        patches = self.linear(hidden[:, 1:]).amax(dim=1)  # class token dropped, as LLaVA's "default" strategy
        return patches, self.cls_linear(hidden[:, 0]) if self.cls_linear is not None else None

    def forward(self, tower: CLIPVisionModel, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.both(tower, pixel_values)[0]


def _normalised(images_u8: torch.Tensor, steps: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    x01 = images_u8.float() / 255.0
    if steps is None:
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x01 - mean) / std
    return diffusion_noise(x01, steps, seed=seed, mean=list(CLIP_MEAN), std=list(CLIP_STD), impl="torch")


def _noised_batch(images_u8: torch.Tensor, spec: VisionPretrainSpec, index: int) -> torch.Tensor:
    """Batch ``index``'s pixels, a ``noise_share`` of them diffusion-noised; a pure function of (seed, index)."""
    rng = np.random.default_rng([spec.seed, index, 7])
    noised = torch.from_numpy(rng.random(len(images_u8)) < spec.noise_share)
    if not spec.noise_share or not noised.any():
        return _normalised(images_u8)
    steps = torch.from_numpy(rng.integers(0, spec.noise_max_step, len(images_u8)))
    out = _normalised(images_u8, steps, seed=int(rng.integers(2**31)))
    return torch.where(noised[:, None, None, None], out, _normalised(images_u8))


def pretrain_tower(spec: VisionPretrainSpec, out_dir: str | os.PathLike, *, scene_cfg: SceneConfig | None = None,
                   heldout: int = 2000, heldout_seed: int = 12, log_every: int = 100, progress: bool = True) -> dict:
    """Train the tower + head on ``spec.scenes`` fresh scenes, save the tower as a ``CLIPVisionModel``
    in ``OUT/tower`` (HF layout; the head beside it as ``probe_head.safetensors``), and write
    ``OUT/tower/pretrain_report.json``: the detection report on ``heldout`` scenes of another stream."""
    out = Path(out_dir)
    cfg = scene_cfg or SceneConfig(image_size=spec.image_size)
    targets = SceneTargets(cfg.classes, cfg.colors)
    t0 = time.time()
    images, scenes = render_scenes(spec.scenes, spec.scene_seed, cfg)
    labels = scene_targets(scenes, targets)
    render_s = time.time() - t0
    tower = build_tower(spec)
    head = TowerHead(spec.hidden, targets.n, spec.feature_layer, spec.cls_head)
    params = [*tower.parameters(), *head.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=spec.lr)
    warmup = max(1, int(spec.warmup_ratio * spec.steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return spec.lr * (step + 1) / warmup
        return spec.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.steps - warmup)))

    loss_fn = torch.nn.BCEWithLogitsLoss()
    order_rng = np.random.default_rng([spec.seed, 1])
    order = np.concatenate([order_rng.permutation(spec.scenes)
                            for _ in range(math.ceil(spec.steps * spec.batch_size / spec.scenes) + 1)])
    log = []
    tower.train()
    t1 = time.time()
    for step in range(spec.steps):
        rows = torch.from_numpy(order[step * spec.batch_size:(step + 1) * spec.batch_size])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits, cls_logits = head.both(tower, _noised_batch(images[rows], spec, step))
        loss = loss_fn(logits, labels[rows])
        if cls_logits is not None:
            loss = loss + loss_fn(cls_logits, labels[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % log_every == 0 or step == spec.steps - 1:
            log.append({"step": step, "loss": loss.item(), "lr": lr_at(step), "s": round(time.time() - t1, 1)})
            if progress:
                print(json.dumps(log[-1]), flush=True)
    train_s = time.time() - t1
    tower.eval()
    tower_dir = out / "tower"
    tower.save_pretrained(tower_dir, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, tower_dir / HEAD_FILE)
    report = detection_report(tower, head, heldout, heldout_seed, cfg)
    report.update(spec=asdict(spec), objective="supervised multi-label (class, class x colour, class x size), "
                  "max-pooled linear head on patch tokens", render_s=round(render_s, 1), train_s=round(train_s, 1),
                  log=log, heldout_scenes=heldout, heldout_seed=heldout_seed)
    (tower_dir / "pretrain_report.json").write_text(json.dumps(report, indent=1))
    (tower_dir / "pretrain_spec.json").write_text(json.dumps(asdict(spec), indent=1))
    return report


def load_tower(path: str | os.PathLike) -> tuple[CLIPVisionModel, TowerHead | None]:
    """The tower of ``path`` (a ``CLIPVisionModel`` directory) and, when saved beside it, its head."""
    path = Path(path)
    tower = CLIPVisionModel.from_pretrained(path, local_files_only=True).eval()
    head = None
    if (path / HEAD_FILE).exists():
        weights = load_file(path / HEAD_FILE)
        spec = json.loads((path / "pretrain_spec.json").read_text()) if (path / "pretrain_spec.json").exists() else {}
        head = TowerHead(weights["linear.weight"].shape[1], weights["linear.weight"].shape[0],
                         spec.get("feature_layer", -2), "cls_linear.weight" in weights)
        head.load_state_dict(weights)
    return tower, head


@torch.no_grad()
def detection_report(tower: CLIPVisionModel, head: TowerHead, n: int, seed: int, cfg: SceneConfig,
                     noise_steps: tuple[int, ...] = NOISE_STEPS, batch_size: int = 500) -> dict:
    """Per-class detection (the head's class logit > 0) on ``n`` scenes of stream ``seed``.

    ``large`` / ``small`` / ``low_contrast``: among images holding an instance of that kind of the
    class (large = large and normal contrast), the share where the class is detected; ``fp``: share of
    images without the class where it is detected. Per noise step k: accuracy over every (image,
    class) presence decision, and the mean large-object detection rate.
    """
    images, scenes = render_scenes(n, seed, cfg)
    classes = cfg.classes
    truth = np.array([[any(o.category == c for o in s.objects) for c in classes] for s in scenes])
    kinds = {"large": lambda o: o.size == "large" and o.contrast == "normal",
             "small": lambda o: o.size == "small" and o.contrast == "normal",
             "low_contrast": lambda o: o.contrast == "low"}
    has = {k: np.array([[any(o.category == c and f(o) for o in s.objects) for c in classes] for s in scenes])
           for k, f in kinds.items()}
    report: dict = {"classes": list(classes), "per_noise_step": {}}
    for k in noise_steps:
        pred = []
        for start in range(0, n, batch_size):
            chunk = images[start:start + batch_size]
            x = _normalised(chunk) if k == 0 else _normalised(chunk, torch.full((len(chunk),), k), seed=seed + k)
            pred.append((head(tower, x)[:, :len(classes)] > 0).numpy())
        det = np.concatenate(pred)
        row = {"accuracy": float((det == truth).mean())}
        for kind, mask in has.items():
            row[kind] = {c: float(det[mask[:, j], j].mean()) for j, c in enumerate(classes) if mask[:, j].any()}
            if row[kind]:  # no key when no image holds that kind of object
                row[f"{kind}_mean"] = float(np.mean(list(row[kind].values())))
                row[f"{kind}_min"] = float(np.min(list(row[kind].values())))
        row["fp"] = {c: float(det[~truth[:, j], j].mean()) for j, c in enumerate(classes)}
        row["fp_mean"] = float(np.mean(list(row["fp"].values())))
        report["per_noise_step"][str(k)] = row
    return report
