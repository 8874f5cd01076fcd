"""LLMEditor against a stub chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import categories_image, image, obj

from halluremedy.generate.cooccurrence import CooccurrenceStats
from halluremedy.generate.llm_editor import LLMEditError, LLMEditor, LLMEditorConfig, edit_messages

IMAGE = image(obj("diamond", color="red", size="large"), obj("circle", color="blue", size="small"),
              obj("circle", color="blue", size="small"), image_id=42)
CAPTION = "a red diamond and two small blue circles."
EDITED = "a red diamond, a yellow ring and two small blue circles."


def editor_for(endpoint, **overrides) -> LLMEditor:
    config = LLMEditorConfig(base_url=endpoint.base_url, model="stub-model", timeout_s=2.0, max_retries=2,
                             backoff_s=0.01, **overrides)
    return LLMEditor(config)


def test_edit_posts_the_request_and_returns_the_answer(stub_endpoint, monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", "secret")
    stub_endpoint.reply_with_content(f'  "{EDITED}"\n')
    stats = CooccurrenceStats.from_images([categories_image("diamond", "ring"), categories_image("circle", "square"),
                                           categories_image("star", "crescent")],
                                          ["diamond", "ring", "circle", "square", "star", "crescent"])
    editor = LLMEditor(LLMEditorConfig(base_url=stub_endpoint.base_url + "/", model="stub-model",
                                       api_key_env="STUB_API_KEY", temperature=0.3, timeout_s=2.0), stats)
    assert editor.edit(IMAGE, CAPTION, "cooccur", np.random.default_rng(0)) == EDITED
    (request,) = stub_endpoint.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer secret"
    body = request["body"]
    assert body["model"] == "stub-model" and body["temperature"] == 0.3 and isinstance(body["seed"], int)
    system, user = body["messages"]
    assert system["role"] == "system" and "exactly one hallucination" in system["content"]
    assert "- 2 x circle (blue, small)\n- 1 x diamond (red, large)" in user["content"]
    assert "Absent objects that often appear with these: ring, square" in user["content"]
    assert user["content"].endswith(f"Caption: {CAPTION}")


def test_messages_name_the_kind():
    for kind, words in (("attribute", "colour"), ("relation", "left of -> right of"), ("cooccur", "fork")):
        assert words in edit_messages(IMAGE, CAPTION, kind)[1]["content"]
    assert "Absent objects" not in edit_messages(IMAGE, CAPTION, "attribute")[1]["content"]


def test_retries_a_server_error_then_succeeds(stub_endpoint):
    stub_endpoint.reply_raw(500, "overloaded")
    stub_endpoint.reply_with_content(EDITED)
    assert editor_for(stub_endpoint).edit(IMAGE, CAPTION, "cooccur", np.random.default_rng(0)) == EDITED
    assert len(stub_endpoint.requests) == 2
    assert stub_endpoint.requests[0]["body"] == stub_endpoint.requests[1]["body"]


def test_gives_up_after_the_retries(stub_endpoint):
    stub_endpoint.reply_raw(503, "down")
    with pytest.raises(LLMEditError, match=r"image 42 \(42.png\), cooccur edit .*HTTP 503.*after 3 attempts"):
        editor_for(stub_endpoint).edit(IMAGE, CAPTION, "cooccur", np.random.default_rng(0))
    assert len(stub_endpoint.requests) == 3


def test_client_error_is_not_retried(stub_endpoint):
    stub_endpoint.reply_raw(400, '{"error": "bad model"}')
    with pytest.raises(LLMEditError, match="image 42 .*HTTP 400.*bad model"):
        editor_for(stub_endpoint).edit(IMAGE, CAPTION, "attribute", np.random.default_rng(0))
    assert len(stub_endpoint.requests) == 1


def test_timeout_is_retried(stub_endpoint):
    stub_endpoint.reply_raw(200, "{}", delay_s=1.0)
    with pytest.raises(LLMEditError, match="image 42 .*failed.*after 2 attempts"):
        LLMEditor(LLMEditorConfig(base_url=stub_endpoint.base_url, model="m", timeout_s=0.2, max_retries=1,
                                  backoff_s=0.01)).edit(IMAGE, CAPTION, "relation", np.random.default_rng(0))


@pytest.mark.parametrize("reply, error", [
    ("", "empty caption"),
    (f"  {CAPTION.replace(' and', '  and')} ", "caption unchanged"),
])
def test_bad_answers_raise_naming_the_record(stub_endpoint, reply, error):
    stub_endpoint.reply_with_content(reply)
    with pytest.raises(LLMEditError, match=f"image 42 \\(42.png\\), attribute edit of .*{error}"):
        editor_for(stub_endpoint).edit(IMAGE, CAPTION, "attribute", np.random.default_rng(0))


def test_malformed_response_raises(stub_endpoint):
    stub_endpoint.reply_raw(200, json.dumps({"choices": []}))
    with pytest.raises(LLMEditError, match="image 42 .*malformed response"):
        editor_for(stub_endpoint).edit(IMAGE, CAPTION, "attribute", np.random.default_rng(0))


def test_none_answer_means_no_edit(stub_endpoint):
    stub_endpoint.reply_with_content("NONE")
    assert editor_for(stub_endpoint).edit(IMAGE, CAPTION, "relation", np.random.default_rng(0)) is None


def test_configuration_errors(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VARIABLE", raising=False)
    with pytest.raises(ValueError, match="'NO_SUCH_KEY_VARIABLE', which is not set"):
        LLMEditor(LLMEditorConfig(base_url="http://127.0.0.1:9", model="m", api_key_env="NO_SUCH_KEY_VARIABLE"))
    with pytest.raises(ValueError, match="base_url"):
        LLMEditorConfig(base_url="127.0.0.1:9", model="m")
