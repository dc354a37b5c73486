"""What a request must be before it is queued."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adaptool.serving.schemas import AdapterLoad, ChatRequest, CompletionRequest, Message


def test_sampling_parameters_are_bounded():
    ok = CompletionRequest(model="a", prompt="x", stop="\n", n=2, temperature=0)
    assert ok.stops == ["\n"] and ok.prompts == ["x"]
    for bad in (
        {"temperature": -1},
        {"top_p": 0},
        {"n": 0},
        {"max_tokens": 0},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": [""]},
    ):
        with pytest.raises(ValidationError):
            CompletionRequest(model="a", prompt="x", **bad)
    assert CompletionRequest(model="a", prompt="x", logprobs=None, user="u").model == "a"


def test_chat_messages_and_their_parts():
    parts = Message(
        role="user", content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    )
    assert parts.text() == "ab"
    with pytest.raises(ValidationError):
        ChatRequest(model="a", messages=[])
    with pytest.raises(ValidationError):
        Message(role="robot", content="x")
    chat = ChatRequest(
        model="a",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert chat.include_usage


def test_an_adapter_to_load_has_a_plain_name():
    assert AdapterLoad(name="tagger-2", path="runs/x").name == "tagger-2"
    with pytest.raises(ValidationError):
        AdapterLoad(name="a b", path="runs/x")
