"""The contract checks of adaptool.testing: every built-in plugin keeps them (they are what a
third-party plugin's tests are held to), and broken plugins fail them with a reason."""

from __future__ import annotations

import pytest

from adaptool import DataError, Example, Formatter
from adaptool.builtin.peft_methods import METHODS
from adaptool.data import load_rows
from adaptool.recipe.schema import DataSection, PeftSection
from adaptool.testing import (
    assert_formatter_contract,
    assert_method_contract,
    assert_quantizer_contract,
)
from tests.helpers import DATA

FORMATTERS = {
    "quote-tags": "quotes.jsonl",
    "instruction": "instructions.jsonl",
    "chat": "chat.jsonl",
    "text": "text.csv",
}


@pytest.mark.parametrize("name", sorted(FORMATTERS))
def test_builtin_formatters_keep_the_contract(registry, tokenizer, name):
    rows = load_rows(DataSection(source=str(DATA / FORMATTERS[name]), formatter=name))
    formatter = registry.create("formatter", name, {})
    assert_formatter_contract(formatter, [rows[i] for i in range(min(4, len(rows)))], tokenizer)


#: settings that fit a model of hidden size 64: (common [peft] keys, method options)
METHOD_SETTINGS = {
    "lora": ({"r": 4, "target_modules": "all-linear"}, {}),
    "ia3": ({"target_modules": "all-linear"}, {}),
    "loha": ({"r": 4, "target_modules": "all-linear"}, {}),
    "lokr": ({"r": 4, "target_modules": "all-linear"}, {}),
    "oft": ({"target_modules": "all-linear"}, {"block_size": 8}),
    "boft": ({"target_modules": "all-linear"}, {"block_size": 4}),
    "vera": ({"r": 16, "target_modules": "all-linear"}, {}),
    "fourierft": ({"target_modules": "all-linear"}, {"n_frequency": 200}),
    "hra": ({"r": 4, "target_modules": "all-linear"}, {}),
    "ln-tuning": ({}, {}),
    "adalora": ({"target_modules": "all-linear"}, {"init_r": 6, "target_r": 4}),
    "prompt-tuning": ({}, {"num_virtual_tokens": 4}),
    "prefix-tuning": ({}, {"num_virtual_tokens": 4}),
    "p-tuning": ({}, {"num_virtual_tokens": 4, "encoder_hidden_size": 32}),
}


def test_every_builtin_method_has_contract_settings():
    assert sorted(METHOD_SETTINGS) == sorted(m.name for m in METHODS)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(METHOD_SETTINGS))
def test_builtin_methods_keep_the_contract(registry, tiny_bloom_dir, name):
    common, options = METHOD_SETTINGS[name]
    method = registry.create("peft-method", name, options)
    assert_method_contract(method, tiny_bloom_dir, PeftSection(method=name, **common))


@pytest.mark.parametrize(
    ("name", "options"),
    [("none", {}), ("bnb-4bit", {"compute_dtype": "float32"}), ("bnb-8bit", {})],
)
def test_builtin_quantizers_keep_the_contract(registry, tiny_bloom_dir, name, options):
    assert_quantizer_contract(registry.create("quantizer", name, options), tiny_bloom_dir)


class Drifting(Formatter):
    """Generates from a prompt other than the one it trains with."""

    name = "drifting"

    def columns(self):
        return ["quote"]

    def format(self, row, tokenizer):
        return Example(f"Q: {row['quote']}\n", "tags")

    def generation_prompt(self, raw, tokenizer):
        return f"Quote: {raw if isinstance(raw, str) else raw['quote']}\n"


class Careless(Drifting):
    """Fails on a row without its column with an error adaptool cannot call bad data."""

    name = "careless"

    def format(self, row, tokenizer):
        if "quote" not in row:
            raise RuntimeError("no quote")
        return Example(f"Q: {row['quote']}\n", "tags")

    def generation_prompt(self, raw, tokenizer):
        return f"Q: {raw if isinstance(raw, str) else raw['quote']}\n"


class Careful(Careless):
    name = "careful"

    def format(self, row, tokenizer):
        if "quote" not in row:
            raise DataError("no quote")
        return super().format(row, tokenizer)


@pytest.mark.parametrize(
    ("formatter", "problem"),
    [
        (Drifting(), "generation_prompt\\(row\\) differs from the prompt"),
        (Careless(), "a row without 'quote' raised RuntimeError"),
        (Careful(), None),
    ],
)
def test_a_broken_formatter_fails_the_contract_with_a_reason(tokenizer, formatter, problem):
    rows = [{"quote": "Be yourself.", "tags": ["self"]}]
    if problem is None:
        assert_formatter_contract(formatter, rows, tokenizer)
        return
    with pytest.raises(AssertionError, match=problem):
        assert_formatter_contract(formatter, rows, tokenizer)


class DropsTheBias(type(METHODS[1]())):  # IA3, whose merge scales some layers' biases
    name = "drops-the-bias"

    def fold(self, layer):
        weight, _ = super().fold(layer)
        return weight, None


class Unfolded(type(METHODS[0]())):  # LoRA that forgets to fold
    name = "unfolded"

    def fold(self, layer):
        return layer.weight, layer.bias


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", [DropsTheBias(), Unfolded()], ids=lambda m: m.name)
def test_a_method_that_folds_wrong_fails_the_contract(tiny_bloom_dir, method):
    settings = PeftSection(method=method.name, target_modules=["query_key_value"])
    with pytest.raises(AssertionError):
        assert_method_contract(method, tiny_bloom_dir, settings)


def test_a_quantizer_that_misdescribes_itself_fails_the_contract(registry, tiny_bloom_dir):
    quantizer = registry.create("quantizer", "none", {})
    quantizer.describe = lambda: {"backend": "something-else"}
    with pytest.raises(AssertionError, match="something-else"):
        assert_quantizer_contract(quantizer, tiny_bloom_dir)
