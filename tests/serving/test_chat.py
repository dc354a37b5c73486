"""A conversation on the engine: each turn is the whole history rendered by the adapter's
chat template and continued as `generate()` continues it."""

from __future__ import annotations

import pytest

from adaptool.errors import AdaptoolError
from adaptool.generate import generate
from adaptool.serving.chat import Conversation, render_chat
from adaptool.serving.engine import Sampling
from adaptool.serving.server import open_engine
from tests.helpers import trained


def test_each_turn_continues_the_rendered_history(tmp_path, tiny_bloom_dir, registry):
    adapter = trained(tmp_path, tiny_bloom_dir, name="a")
    engine = open_engine([("a", str(adapter))])
    chat = Conversation(engine, "a", sampling=Sampling(max_tokens=8, temperature=0))
    heard: list[str] = []
    first = chat.say("hello there", on_text=heard.append)
    assert "".join(heard) == first
    second = chat.say("and again")
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    tokenizer = engine.tokenizer_for("a")
    history = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "and again"},
    ]
    prompt = render_chat(tokenizer, history, "a")
    assert "hello there" in prompt and first in prompt
    engine.model.set_adapter("a")
    expected = generate(
        engine.model, tokenizer, [prompt], max_new_tokens=8, add_special_tokens=False
    )
    assert second == expected[0].output
    chat.reset()
    assert chat.history == []


def test_a_model_without_a_chat_template_is_refused(tokenizer):
    from copy import deepcopy

    bare = deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(AdaptoolError, match="no chat template"):
        render_chat(bare, [{"role": "user", "content": "hi"}], "plain")
