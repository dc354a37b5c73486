"""The first-party plugin in plugins/adaptool-sharegpt, installed like a third-party package
(the README's test command installs it): found through its entry point and usable in a recipe."""

from __future__ import annotations

from adaptool.check import check
from adaptool.plugins import load_plugins, use_plugins
from adaptool.recipe import load_recipe
from tests.helpers import write_recipe

ROW = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
    ]
}


def test_sharegpt_is_registered_through_its_entry_point():
    plugins = load_plugins(strict=True, disabled=[])
    entry = plugins.registry.entry("formatter", "sharegpt")
    assert entry.provider.distribution == "adaptool-sharegpt"
    assert entry.provider.plugin == "sharegpt" and not entry.provider.builtin
    assert plugins.plugins["sharegpt"].registers == {"formatter": ["sharegpt"]}


def test_sharegpt_formats_with_the_chat_template(tokenizer):
    registry = load_plugins(strict=True, disabled=[]).registry
    cls = registry.get("formatter", "sharegpt")
    fmt = cls(cls.Options())
    example = fmt.format(ROW, tokenizer)
    assert example.prompt == "<|system|>\nBe brief.</s><|user|>\nHi</s><|assistant|>\n"
    assert example.completion == "Hello!</s>"
    assert fmt.generation_prompt("Hi", tokenizer) == "<|user|>\nHi</s><|assistant|>\n"


def test_sharegpt_in_a_recipe_with_check(tmp_path, tokenizer_dir):
    import json

    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    path = write_recipe(
        tmp_path,
        f"""
[model]
name = "{tokenizer_dir}"
[data]
source = "chats.jsonl"
formatter = "sharegpt"
conversations_column = "conversations"
[output]
dir = "out"
""",
    )
    use_plugins(load_plugins(strict=True, disabled=[]))
    report = check(load_recipe(path))
    assert report.examples[0].segments[-1] == ("Hello!</s>", True)
