"""LLaVA conversation records: validation and assistant-only labels."""

import pytest

from halluremedy.data.coco import DatasetError
from halluremedy.data.conversation import (
    IGNORE_INDEX,
    Conversation,
    ConversationEncoder,
    Turn,
    load_conversations,
    parse_conversation,
    write_jsonl_atomic,
)


def test_encoding_labels_cover_answers_only(tiny_llava_factory):
    _, processor = tiny_llava_factory()
    tok = processor.tokenizer
    enc = ConversationEncoder(tok, image_seq_length=16)
    ids, labels = enc.encode([Turn("Describe this image.", "a red square."), Turn("Explain why.", "a box.")])
    assert len(ids) == len(labels)
    assert ids[0] == tok.bos_token_id and ids.count(tok.image_token_id) == 16
    supervised = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    # exactly the two answers and their </s>
    assert supervised == (tok(" a red square.", add_special_tokens=False).input_ids + [tok.eos_token_id]
                          + tok(" a box.", add_special_tokens=False).input_ids + [tok.eos_token_id])
    # the second turn carries no image
    second_prompt = enc.prompt_ids("Explain why.", first=False)
    assert tok.image_token_id not in second_prompt and tok.bos_token_id not in second_prompt


def test_too_long_is_refused_not_truncated(tiny_llava_factory):
    _, processor = tiny_llava_factory()
    enc = ConversationEncoder(processor.tokenizer, image_seq_length=16, max_length=20)
    with pytest.raises(DatasetError) as e:
        enc.encode([Turn("Describe this image.", "a red square.")], where="record 7")
    # the real limit and where it comes from, and no advice to raise a max_length no flag exposes
    assert str(e.value).startswith("record 7: 30 tokens (including 16 image tokens) > the model's 20-token context")
    assert "max_position_embeddings" in str(e.value) and "raise max_length" not in str(e.value)


@pytest.mark.parametrize("record, field", [
    ({"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}, "'image'"),
    ({"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"}]}, "'conversations'"),
    ({"image": "x.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "conversations\\[0\\]"),
    ({"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": " "}]},
     "empty"),
    ({"image": "x.png", "conversations": [{"from": "gpt", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
     "conversations\\[0\\]"),
])
def test_bad_records_name_field(record, field):
    with pytest.raises(DatasetError, match=f"f.jsonl:3: .*{field}"):
        parse_conversation(record, "f.jsonl:3")


def test_jsonl_round_trip_and_malformed_line(tmp_path):
    conv = Conversation("a.png", (Turn("Describe this image.", "a box."), Turn("Explain why.", "it is.")), id="r1")
    path = tmp_path / "c.jsonl"
    write_jsonl_atomic(path, [conv.to_llava()])
    assert load_conversations(path) == [conv]
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(DatasetError, match=r"c.jsonl:2: malformed JSON"):
        load_conversations(path)
