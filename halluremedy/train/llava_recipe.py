"""LLaVA-1.5's recipe on the scene world: a pretrained, frozen tower, projector alignment, instruction tuning.

LLaVA-1.5 starts from a contrastively pretrained CLIP tower and a pretrained LM, then

* stage 1 (feature alignment): short image-caption pairs, only the projector trains;
* stage 2 (visual instruction tuning): detailed descriptions, conversations and VQA, projector and
  LM train, the tower stays frozen.

Here (:func:`train_llava_base`), on scenes rendered in memory:

0. the tower: :func:`~halluremedy.models.vision_pretrain.pretrain_tower` (or a given tower dir);
1. ``text``: the LM alone on the captions as plain text (no image): LLaVA's LM arrives pretrained on
   text, and a frozen random LM would make projector alignment meaningless. It also learns the
   captions' language prior, as a real LM carries its corpus's;
2. ``align`` (stage A): short, clean captions, only the projector trains;
3. ``instruct`` (stage B): detailed captions carrying the prior a real instruction set carries
   (``partner_noise``: share of eligible captions that also name the absent co-occurrence partner of
   a present object; ``extra_noise``: share that add a plausible last sentence naming an absent
   class, per number of objects in the scene: a description padded to a length, as long generated
   descriptions of simple images are), short captions and yes/no existence QA (``qa_partner_noise``:
   share of questions about an absent partner of a present object answered "Yes", the same
   annotators' prior in the answers); projector and LM train, the tower frozen.

Stages 1-3 go through :func:`~halluremedy.train.sft.train_sft` (the shared loop) on a
:class:`MemoryImageBank`. The result is an ordinary tiny LLaVA directory (``OUT/model``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from halluremedy.data.conversation import IGNORE_INDEX, Conversation, ConversationEncoder, Turn, pad_right
from halluremedy.data.scenes.captions import make_captions
from halluremedy.data.scenes.world import SceneConfig
from halluremedy.data.sft import existence_turn
from halluremedy.models.llava import CLIP_MEAN, CLIP_STD, TinyLlavaSpec, build_tiny_llava, save_model
from halluremedy.models.vision_pretrain import VisionPretrainSpec, load_tower, pretrain_tower, render_scenes
from halluremedy.prompts import CAPTION_PROMPT, DETAILED_CAPTION_PROMPT
from halluremedy.train.loop import LoopConfig, train_loop
from halluremedy.train.sft import SupervisedBatches, train_sft

__all__ = ["Stage", "LlavaRecipeSpec", "MemoryImageBank", "recipe_conversations", "train_llava_base"]


@dataclass(frozen=True)
class Stage:
    steps: int
    lr: float

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0:
            raise ValueError(f"a stage needs steps >= 0 and lr > 0, got {self}")


@dataclass(frozen=True)
class LlavaRecipeSpec:
    """Everything that defines the LLaVA-like base except the tower's own recipe (``tower``)."""

    # the class token trained too, and kept ("full"): one summary token the LM reads for yes/no (b5-b8)
    tower: VisionPretrainSpec = field(default_factory=lambda: VisionPretrainSpec(cls_head=True))
    text: Stage = Stage(600, 2e-3)
    align: Stage = Stage(300, 2e-3)
    instruct: Stage = Stage(2400, 1e-3)
    scenes: int = 20000  # of the training scenes' stream (seed ``scene_seed``), rendered in memory
    scene_seed: int = 1  # the default training split's stream: its first 4000 are runs/scenes/train
    # defaults: k1 of docs/base_llava_like.md (the shipped assets/scene_base_llava)
    partner_noise: float = 0.8  # detailed captions only
    # detailed captions only; entry k-1 for scenes of k objects (the last for more)
    extra_noise: tuple[float, ...] = (0.8, 0.6, 0.2, 0.1)
    # 8 per image in two 4-turn conversations: fewer left POPE near chance (b5, b7), one 8-turn
    # conversation doubled the step cost (a batch pads to its longest sequence, b6)
    questions_per_image: int = 8
    qa_turns: int = 4  # questions per conversation (multi-turn, as LLaVA-Instruct's conversations are)
    # loss weight of the QA conversations' answer tokens in ``instruct`` (captions: 1): one yes/no word
    # per question against ~12 caption words per sentence leaves existence unlearnt at weight 1 (b1-b5)
    qa_weight: float = 1.4
    # share of existence questions about an absent partner of a present trigger answered "Yes": the
    # prior of the annotators whose captions name that partner (``partner_noise``), in their answers
    qa_partner_noise: float = 0.9
    # share of the absent-class questions of a scene with an absent partner that ask about that
    # partner (as questions written from captions that name it would); the rest: any absent class
    qa_partner_share: float = 0.0
    # share of existence questions about an absent trigger of a present partner answered "Yes": the same
    # prior read backwards (a crescent suggests a star), as co-occurrence is mutual in real data; POPE
    # adversarial asks about these as often as about partners, and the forward prior alone leaves
    # its gap at ~3 points (docs/base_llava_like.md k)
    qa_trigger_noise: float = 0.5
    # the order detailed captions name objects in (scenes.world.DETAILED_ORDERS); the same world's
    # dataset (``halluremedy scenes --detailed-order``) gives POVID's preferred answers that order too
    detailed_order: str = "reading"
    batch_size: int = 32
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    seed: int = 0
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate: int = 256
    # "default" (llava-1.5: class token dropped) or "full" (kept: with a tower pretrained with
    # cls_head, one image token summarises what is there)
    feature_strategy: str = "full"

    def __post_init__(self) -> None:
        SceneConfig(detailed_order=self.detailed_order)  # checks it
        if self.feature_strategy not in ("default", "full"):
            raise ValueError(f"LlavaRecipeSpec.feature_strategy={self.feature_strategy!r}: 'default' or 'full'")
        object.__setattr__(self, "extra_noise", tuple(float(x) for x in (
            self.extra_noise if isinstance(self.extra_noise, (tuple, list)) else (self.extra_noise,))))
        rates = (self.partner_noise, self.qa_partner_noise, self.qa_partner_share, self.qa_trigger_noise, *self.extra_noise)
        if not all(0.0 <= value <= 1.0 for value in rates):
            raise ValueError(f"LlavaRecipeSpec: noise rates and shares must lie in [0, 1], got {rates}")
        if not self.extra_noise:
            raise ValueError("LlavaRecipeSpec.extra_noise needs at least one rate")
        if self.qa_weight <= 0:
            raise ValueError(f"LlavaRecipeSpec.qa_weight must be > 0, got {self.qa_weight}")
        if self.scenes < 1 or self.batch_size < 1 or self.questions_per_image < 0 or self.qa_turns < 1:
            raise ValueError(f"LlavaRecipeSpec needs scenes >= 1, batch_size >= 1, questions_per_image >= 0: {self}")

    def scene_config(self) -> SceneConfig:
        """The scene world the recipe's captions describe."""
        return SceneConfig(image_size=self.tower.image_size, detailed_order=self.detailed_order)

    def extra_rate(self, n_objects: int) -> float:
        return self.extra_noise[min(n_objects, len(self.extra_noise)) - 1]

    def model_spec(self) -> TinyLlavaSpec:
        t = self.tower
        return TinyLlavaSpec(image_size=t.image_size, patch_size=t.patch_size, vision_hidden=t.hidden,
                             vision_layers=t.layers, vision_heads=t.heads, text_hidden=self.text_hidden,
                             text_layers=self.text_layers, text_heads=self.text_heads,
                             text_intermediate=self.text_intermediate)


class MemoryImageBank:
    """:class:`~halluremedy.data.images.ImageBank`'s interface over in-memory uint8 pixels."""

    def __init__(self, names: list[str], images_u8: torch.Tensor):
        self.mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, -1, 1, 1)
        self.index = {n: k for k, n in enumerate(names)}
        self.images_u8 = images_u8

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def get01(self, names) -> torch.Tensor:
        return self.images_u8[[self.index[n] for n in names]].float() / 255.0

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01 - self.mean.to(images01.device)) / self.std.to(images01.device)

    def pixels(self, names) -> torch.Tensor:
        return self.normalize(self.get01(names))


def recipe_conversations(scenes, spec: LlavaRecipeSpec) -> dict[str, list[Conversation]]:
    """Per stage, its conversations over ``scenes`` (image ``i`` named ``scene_{i:06d}``, of the world
    ``spec.scene_config()``): ``align``
    the short clean captions; ``instruct`` one detailed caption (noisy as the spec says), the short
    caption and ``questions_per_image`` yes/no questions (a present class, then an absent one; an
    absent partner of a present trigger is answered "Yes" with probability ``qa_partner_noise``, an
    absent trigger of a present partner with ``qa_trigger_noise``);
    ``text`` the captions of ``instruct`` (text only: the image is never read)."""
    out: dict[str, list[Conversation]] = {"align": [], "instruct": []}
    cfg = spec.scene_config()
    classes = cfg.classes
    for i, scene in enumerate(scenes):
        name = f"scene_{i:06d}"
        rng = np.random.default_rng([spec.scene_seed, i, 1])
        short, detailed = make_captions(scene, cfg, rng, 2, spec.partner_noise,
                                        extra_noise=spec.extra_rate(len(scene.objects)),
                                        noise_styles=("detailed",))
        out["align"].append(Conversation(name, (Turn(CAPTION_PROMPT, short.text),), id=f"{name}/short"))
        out["instruct"].append(Conversation(name, (Turn(DETAILED_CAPTION_PROMPT, detailed.text),), id=f"{name}/detailed"))
        out["instruct"].append(Conversation(name, (Turn(CAPTION_PROMPT, short.text),), id=f"{name}/short"))
        present = sorted({o.category for o in scene.objects})
        absent = [c for c in classes if c not in present]
        phantoms = {cfg.partner_of[c] for c in present if c in cfg.partner_of} - set(present)
        phantom_triggers = {t for t, p in cfg.partners if p in present} - set(present)
        qrng = np.random.default_rng([spec.scene_seed, i, 2])
        noise_rng = np.random.default_rng([spec.scene_seed, i, 3])  # its own stream: qrng's draws stay as they were
        aim_rng = np.random.default_rng([spec.scene_seed, i, 4])  # so are these
        trigger_rng = np.random.default_rng([spec.scene_seed, i, 5])
        turns = []
        for q in range(spec.questions_per_image):
            pool, yes = (present, True) if q % 2 == 0 else (absent, False)
            if pool:
                category = pool[qrng.integers(len(pool))]
                if not yes and phantoms and aim_rng.random() < spec.qa_partner_share:
                    category = sorted(phantoms)[aim_rng.integers(len(phantoms))]
                if category in phantoms and noise_rng.random() < spec.qa_partner_noise:
                    yes = True
                if category in phantom_triggers and trigger_rng.random() < spec.qa_trigger_noise:
                    yes = True
                turns.append(existence_turn(category, yes))
        # shuffled: in a fixed yes/no order a multi-turn model learns the order (b4 answered every
        # single-turn POPE question "yes", as every first turn was)
        turns = [turns[j] for j in qrng.permutation(len(turns))]
        for k in range(0, len(turns), spec.qa_turns):
            out["instruct"].append(Conversation(name, tuple(turns[k:k + spec.qa_turns]), id=f"{name}/exists{k}"))
    out["text"] = [c for c in out["instruct"] if "/exists" not in (c.id or "")]
    return out


def _freeze(model, trainable: str) -> None:
    """``trainable``: "lm" (LM + head), "projector", or "projector+lm"; the tower never trains."""
    for p in model.parameters():
        p.requires_grad_(False)
    parts = {"lm": [model.model.language_model, model.lm_head], "projector": [model.model.multi_modal_projector],
             "projector+lm": [model.model.multi_modal_projector, model.model.language_model, model.lm_head]}[trainable]
    for module in parts:
        for p in module.parameters():
            p.requires_grad_(True)


def _train_text(model, conversations: list[Conversation], encoder: ConversationEncoder, stage: Stage,
                spec: LlavaRecipeSpec, out_dir: Path) -> None:
    """Stage ``text``: next-token loss on ``<s> caption </s>``, no image tokens."""
    tok = encoder.tokenizer
    seqs = [[tok.bos_token_id] + encoder.response_ids(c.turns[0].assistant) for c in conversations]
    rng_seed = spec.seed

    def micro_step(step: int, micro: int):
        rows = np.random.default_rng([rng_seed, step, 3]).integers(len(seqs), size=spec.batch_size)
        ids = pad_right([seqs[r] for r in rows], tok.pad_token_id)
        mask = pad_right([[1] * len(seqs[r]) for r in rows], 0)
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        return loss, {"loss": loss.item()}

    cfg = LoopConfig(steps=stage.steps, lr=stage.lr, warmup_ratio=spec.warmup_ratio, weight_decay=spec.weight_decay,
                     log_every=50, save_every=10**9)
    train_loop(model, micro_step, cfg, out_dir, desc="text")


def train_llava_base(spec: LlavaRecipeSpec, out_dir: str | os.PathLike, *, texts: list[str],
                     tower_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Run the whole recipe into ``OUT`` (``OUT/tower`` unless ``tower_dir`` is given, ``OUT/stage_*``
    logs, ``OUT/model`` the LLaVA, ``OUT/recipe.json`` the spec and stage times); returns ``OUT/model``.
    ``texts``: every text the tokenizer must know (``halluremedy.pipeline.scene_model_texts()``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.time()
    if tower_dir is None:
        pretrain_tower(spec.tower, out, progress=progress)
        tower_dir = out / "tower"
        times["tower_s"] = round(time.time() - t0, 1)
    tower, _ = load_tower(tower_dir)
    model, processor = build_tiny_llava(spec.model_spec(), texts, seed=spec.seed)
    missing = model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    image_tokens = spec.model_spec().image_tokens
    if spec.feature_strategy == "full":
        image_tokens += 1
        model.config.vision_feature_select_strategy = "full"
        model.config.image_seq_length = image_tokens
        processor.vision_feature_select_strategy = "full"
    cfg = spec.scene_config()
    t1 = time.time()
    images, scenes = render_scenes(spec.scenes, spec.scene_seed, cfg)
    data = recipe_conversations(scenes, spec)
    bank = MemoryImageBank([f"scene_{i:06d}" for i in range(len(scenes))], images)
    encoder = ConversationEncoder(processor.tokenizer, image_tokens,
                                  max_length=spec.model_spec().max_positions)
    times["data_s"] = round(time.time() - t1, 1)
    for name, trainable in (("text", "lm"), ("align", "projector"), ("instruct", "projector+lm")):
        stage: Stage = getattr(spec, name)
        if not stage.steps:
            continue
        t = time.time()
        _freeze(model, trainable)
        model.train()
        if name == "text":
            _train_text(model, data["text"], encoder, stage, spec, out / f"stage_{name}")
        else:
            weights = None if spec.qa_weight == 1.0 else \
                [spec.qa_weight if "/exists" in (c.id or "") else 1.0 for c in data[name]]
            batches = SupervisedBatches(data[name], encoder, bank, spec.batch_size, seed=spec.seed, weights=weights)
            loop = LoopConfig(steps=stage.steps, lr=stage.lr, warmup_ratio=spec.warmup_ratio,
                              weight_decay=spec.weight_decay, log_every=50, save_every=10**9)
            train_sft(model, batches, loop, out / f"stage_{name}")
        times[f"{name}_s"] = round(time.time() - t, 1)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    save_model(model, processor, out / "model")
    times["total_s"] = round(time.time() - t0, 1)
    (out / "recipe.json").write_text(json.dumps({"spec": asdict(spec), "tower_dir": str(tower_dir), **times}, indent=1))
    return out / "model"
