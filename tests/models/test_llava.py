"""Tiny LLaVA: HF-layout round trip, tokenizer, seeded generation."""

import pytest
import torch
from PIL import Image

from halluremedy.models.generate import Decoding, generate_answers
from halluremedy.models.llava import TinyLlavaSpec, build_tiny_llava, load_model, save_model
from halluremedy.models.tokenizer import split_words
from halluremedy.prompts import llava_prompt, prompt_words

TEXTS = prompt_words() + ["a red circle and two blue squares.", "yes", "no"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = build_tiny_llava(TinyLlavaSpec(), TEXTS, seed=3)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_model(model, processor, path)
    return model, processor, path


def test_tokenizer_round_trip_and_image_token(tiny):
    _, processor, _ = tiny
    tok = processor.tokenizer
    ids = tok("a red circle and two blue squares.", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == "a red circle and two blue squares."
    assert split_words("Is there a red circle?") == ["is", "there", "a", "red", "circle", "?"]
    # the processor expands one <image> into image_seq_length placeholders, like llava-1.5-hf (576)
    out = processor(text=[llava_prompt("Describe this image.")], images=[Image.new("RGB", (32, 32))], return_tensors="pt")
    assert (out["input_ids"] == tok.image_token_id).sum() == TinyLlavaSpec().image_tokens == 16


def test_save_load_same_function(tiny):
    model, processor, path = tiny
    loaded, loaded_processor = load_model(path)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
         "tokenizer_config.json"])
    inputs = loaded_processor(text=[llava_prompt("Describe this image.")], images=[Image.new("RGB", (32, 32), "red")],
                              return_tensors="pt")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_save_is_atomic_over_existing(tiny, tmp_path):
    model, processor, _ = tiny
    path = tmp_path / "m"
    save_model(model, processor, path)
    save_model(model, processor, path)  # overwrite: old copy replaced, no temp dirs left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_refuses_non_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)


def test_generation_greedy_deterministic_sampling_seeded(tiny):
    model, processor, _ = tiny
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    questions = ["Describe this image."] * 3
    greedy = generate_answers(model, processor, images, questions, Decoding(0.0, 6), batch_size=2)
    assert greedy == generate_answers(model, processor, images, questions, Decoding(0.0, 6), batch_size=3)
    s1 = generate_answers(model, processor, images, questions, Decoding(1.0, 6, seed=1), batch_size=2)
    torch.manual_seed(123)  # the global RNG must not matter
    assert s1 == generate_answers(model, processor, images, questions, Decoding(1.0, 6, seed=1), batch_size=2)
    s2 = generate_answers(model, processor, images, questions, Decoding(1.0, 6, seed=2), batch_size=2)
    assert s1 != s2
