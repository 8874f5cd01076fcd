"""The LLaVA-1.5-style base recipe end to end at toy size."""

import json

import pytest
import torch

from halluremedy.data.scenes.world import SceneConfig
from halluremedy.errors import ConfigError
from halluremedy.models.llava import load_model
from halluremedy.models.vision_pretrain import VisionPretrainSpec, load_tower, render_scenes
from halluremedy.pipeline import ensure_llava_base, scene_model_texts
from halluremedy.train.llava_recipe import LlavaRecipeSpec, Stage, recipe_conversations, train_llava_base

TOWER = VisionPretrainSpec(hidden=32, layers=2, heads=2, steps=10, batch_size=16, scenes=64)
SPEC = LlavaRecipeSpec(tower=TOWER, text=Stage(4, 1e-3), align=Stage(3, 1e-3), instruct=Stage(4, 1e-3), scenes=48,
                       batch_size=8, text_hidden=32, text_layers=1, text_heads=2, text_intermediate=64)
CLEAN_QA = {"qa_partner_noise": 0.0, "qa_trigger_noise": 0.0}  # every yes/no answer true


def test_conversations_carry_noise_in_detailed_captions_only():
    spec = LlavaRecipeSpec(partner_noise=1.0, extra_noise=1.0, scenes=30, detailed_order="random")
    cfg = SceneConfig()
    _, scenes = render_scenes(30, 1, cfg)
    data = recipe_conversations(scenes, spec)
    assert len(data["align"]) == 30 and len(data["text"]) == 60
    assert all("there is also" not in c.turns[0].assistant for c in data["align"])
    detailed = [c.turns[0].assistant for c in data["instruct"] if c.id.endswith("/detailed")]
    assert all("there is also" in d for d in detailed)  # every scene lacks some class, so every one gets an extra
    clean = recipe_conversations(scenes, LlavaRecipeSpec(partner_noise=0.0, extra_noise=0.0, scenes=30))
    assert [c.turns[0].assistant for c in clean["align"]] == [c.turns[0].assistant for c in data["align"]]
    # extra sentences by object count: only one-object scenes get one here
    by_count = recipe_conversations(scenes, LlavaRecipeSpec(partner_noise=0.0, extra_noise=(1.0, 0.0), scenes=30))
    for scene, conv in zip(scenes, [c for c in by_count["instruct"] if c.id.endswith("/detailed")]):
        if len(scene.objects) <= 2:  # (longer clean captions may chain objects with "there is also" themselves)
            assert ("there is also" in conv.turns[0].assistant) == (len(scene.objects) == 1)
    assert LlavaRecipeSpec(extra_noise=(0.5, 0.1)).extra_rate(4) == 0.1
    multi = recipe_conversations(scenes, LlavaRecipeSpec(questions_per_image=6, qa_turns=3, scenes=30, **CLEAN_QA))
    qa = [c for c in multi["instruct"] if "/exists" in c.id]
    assert len(qa) == 60 and all(len(c.turns) == 3 for c in qa)
    firsts = [c.turns[0].assistant for c in qa]
    assert 0.2 < firsts.count("Yes") / len(firsts) < 0.8  # the order is shuffled, not yes-first
    assert sorted(t.assistant for c in qa[:2] for t in c.turns) == ["No"] * 3 + ["Yes"] * 3
    # reading order changes the detailed captions only
    reading = recipe_conversations(scenes, LlavaRecipeSpec(partner_noise=1.0, extra_noise=1.0, scenes=30,
                                                           detailed_order="reading"))
    changed = 0
    for a, b in zip(data["instruct"], reading["instruct"]):
        if a.id.endswith("/detailed"):
            changed += a.turns != b.turns
        else:
            assert a == b
    assert changed > 5
    with pytest.raises(ValueError, match="detailed_order"):
        LlavaRecipeSpec(detailed_order="salience")


def _absent_partners(cfg, present):
    return {cfg.partner_of[c] for c in present if c in cfg.partner_of} - present


def _absent_triggers(cfg, present):
    return {t for t, p in cfg.partners if p in present} - present


@pytest.mark.parametrize("field, phantoms_of", [("qa_partner_noise", _absent_partners),
                                                ("qa_trigger_noise", _absent_triggers)])
def test_qa_noise_answers_yes_to_its_absent_class_only(field, phantoms_of):
    cfg = SceneConfig()
    _, scenes = render_scenes(200, 1, cfg)

    def qa(noise):
        data = recipe_conversations(scenes, LlavaRecipeSpec(**{**CLEAN_QA, field: noise}, scenes=200))
        return [[(t.user, t.assistant) for c in data["instruct"] if c.id.startswith(f"scene_{i:06d}/exists")
                 for t in c.turns] for i in range(len(scenes))]

    clean, noisy, half = qa(0.0), qa(1.0), qa(0.5)
    flipped = 0
    for scene, a, b, h in zip(scenes, clean, noisy, half):
        present = {o.category for o in scene.objects}
        phantoms = phantoms_of(cfg, present)
        assert [q for q, _ in a] == [q for q, _ in b] == [q for q, _ in h]  # the same questions, in the same order
        for (question, truth), (_, answer), (_, half_answer) in zip(a, b, h):
            asks_phantom = any(f" {c} " in question for c in phantoms)
            assert truth == ("Yes" if any(f" {c} " in question for c in present) else "No")
            assert answer == ("Yes" if asks_phantom else truth)
            assert half_answer == truth or asks_phantom
            flipped += half_answer != truth
    n_phantom_questions = sum(a != b for c, n in zip(clean, noisy) for a, b in zip(c, n))
    assert n_phantom_questions > 20 and 0.3 < flipped / n_phantom_questions < 0.7
    with pytest.raises(ValueError, match="rates and shares"):
        LlavaRecipeSpec(**{field: 1.5})


def test_recipe_end_to_end_keeps_the_tower_frozen(tmp_path):
    torch.manual_seed(0)
    model_dir = train_llava_base(SPEC, tmp_path, texts=scene_model_texts(), progress=False)
    model, processor = load_model(model_dir)
    tower, _ = load_tower(tmp_path / "tower")
    for (name, a), b in zip(model.model.vision_tower.state_dict().items(), tower.state_dict().values()):
        assert torch.equal(a, b), name  # frozen in every stage
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert {"tower_s", "text_s", "align_s", "instruct_s", "total_s"} <= set(recipe)
    assert SPEC.feature_strategy == "full"  # the default: 16 patches + the class token
    assert model.config.vision_config.hidden_size == 32 and model.config.image_seq_length == 17
    for stage in ("stage_text", "stage_align", "stage_instruct"):
        assert (tmp_path / stage / "metrics.jsonl").exists()


def test_full_strategy_keeps_the_class_token(tmp_path):
    from dataclasses import replace

    from PIL import Image

    from halluremedy.models.generate import Decoding, generate_answers

    spec = replace(SPEC, tower=replace(TOWER, cls_head=True), feature_strategy="full")
    model_dir = train_llava_base(spec, tmp_path, texts=scene_model_texts(), progress=False)
    model, processor = load_model(model_dir)
    assert model.config.image_seq_length == 17 and model.config.vision_feature_select_strategy == "full"
    _, head = load_tower(tmp_path / "tower")
    assert head.cls_linear is not None
    images, _ = render_scenes(2, 5, SceneConfig())
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
    answers = generate_answers(model, processor, pil, ["Describe this image."] * 2, Decoding(0.0, 5), batch_size=2)
    assert len(answers) == 2


def test_ensure_llava_base_trains_once_then_reuses_and_refuses_another_recipe(tmp_path):
    from dataclasses import replace
    spec = replace(SPEC, qa_weight=3.0, questions_per_image=4, qa_turns=2)
    model_dir = ensure_llava_base(tmp_path / "base", spec)
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert json.loads((tmp_path / "base" / "base_recipe.json").read_text())["qa_weight"] == 3.0
    assert ensure_llava_base(tmp_path / "base", spec) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
    with pytest.raises(ConfigError, match="another recipe"):
        ensure_llava_base(tmp_path / "base", replace(spec, qa_weight=1.0))


def test_qa_partner_share_aims_absent_questions_at_absent_partners():
    cfg = SceneConfig()
    _, scenes = render_scenes(200, 1, cfg)

    def questions(share):
        data = recipe_conversations(scenes, LlavaRecipeSpec(qa_partner_share=share, scenes=200, **CLEAN_QA))
        return [sorted((t.user, t.assistant) for c in data["instruct"] if c.id.startswith(f"scene_{i:06d}/exists")
                       for t in c.turns) for i in range(len(scenes))]

    base, aimed, all_aimed = questions(0.0), questions(0.5), questions(1.0)
    assert base == questions(0.0)
    n_absent = n_aimed = 0
    for scene, b, a, full in zip(scenes, base, aimed, all_aimed):
        present = {o.category for o in scene.objects}
        phantoms = {cfg.partner_of[c] for c in present if c in cfg.partner_of} - present
        if not phantoms:
            assert b == a == full  # scenes without an absent partner keep their questions
            continue
        assert [x for x in b if x[1] == "Yes"] == [x for x in a if x[1] == "Yes"]  # present-class questions untouched
        no_full = [q for q, ans in full if ans == "No"]
        assert no_full and all(any(f" {c} " in q for c in phantoms) for q in no_full)
        no_half = [q for q, ans in a if ans == "No"]
        n_absent += len(no_half)
        n_aimed += sum(any(f" {c} " in q for c in phantoms) for q in no_half)
    assert 0.45 < n_aimed / n_absent < 0.75  # half aimed, plus the uniform draws that hit a partner anyway
    with pytest.raises(ValueError, match="rates and shares"):
        LlavaRecipeSpec(qa_partner_share=1.5)
