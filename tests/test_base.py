"""The plugin base classes: Formatter.score's default (exact match, stopped at EOS), the
defaults of Plugin and Quantizer, and Options (unknown keys and wrong types refused)."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from adaptool.base import Example, Formatter, Options, Plugin, Quantizer
from adaptool.generate import Generation

EOS_TOKENIZER = SimpleNamespace(eos_token="</s>")
NO_EOS_TOKENIZER = SimpleNamespace(eos_token=None)


class Answer(Formatter):
    """Prompt: the question; completion: the answer column (as written in the row)."""

    name = "answer"

    def columns(self) -> list[str]:
        return ["question", "answer"]

    def format(self, row: Mapping[str, Any], tokenizer: Any) -> Example:
        return Example(row["question"], row["answer"])


def gen(output: str, *, stopped: bool = True) -> Generation:
    return Generation(prompt="q", output=output, tokens=3, stopped=stopped, seconds=0.1)


# -- Formatter.score -----------------------------------------------------------------------------


def test_score_counts_exact_matches_with_eos_stripped_from_the_reference():
    rows = [
        {"question": "a", "answer": "Paris.</s>"},  # EOS written in the data
        {"question": "b", "answer": " 5 "},  # surrounding spaces do not count
        {"question": "c", "answer": "Bonjour."},
        {"question": "d", "answer": "yes"},
    ]
    outputs = [gen("Paris."), gen("5\n"), gen("Bonsoir.", stopped=False), gen("no")]
    scores = Answer().score(rows, outputs, EOS_TOKENIZER)
    assert scores == {"rows": 4, "exact_match": 0.5, "stopped_at_eos": 0.75}


def test_score_strips_eos_only_when_the_tokenizer_has_one():
    rows = [{"question": "a", "answer": "Paris.</s>"}]
    assert Answer().score(rows, [gen("Paris.")], EOS_TOKENIZER)["exact_match"] == 1.0
    assert Answer().score(rows, [gen("Paris.")], NO_EOS_TOKENIZER)["exact_match"] == 0.0
    assert Answer().score(rows, [gen("Paris.</s>")], NO_EOS_TOKENIZER)["exact_match"] == 1.0


def test_score_strips_only_a_trailing_eos():
    rows = [{"question": "a", "answer": "</s>Paris."}]
    assert Answer().score(rows, [gen("Paris.")], EOS_TOKENIZER)["exact_match"] == 0.0


def test_score_of_no_outputs_is_zero_not_a_division_error():
    assert Answer().score([], [], EOS_TOKENIZER) == {
        "rows": 0,
        "exact_match": 0.0,
        "stopped_at_eos": 0.0,
    }


def test_score_refuses_rows_and_outputs_of_different_lengths():
    rows = [{"question": "a", "answer": "x"}, {"question": "b", "answer": "y"}]
    with pytest.raises(ValueError):
        Answer().score(rows, [gen("x")], EOS_TOKENIZER)


def test_formatter_methods_a_plugin_must_write_are_not_implemented_and_parse_is_none():
    bare = Formatter()
    with pytest.raises(NotImplementedError):
        bare.columns()
    with pytest.raises(NotImplementedError):
        bare.format({}, None)
    with pytest.raises(NotImplementedError):
        bare.generation_prompt("x", None)
    assert bare.parse("['a']") is None
    assert Formatter.prompt_has_special_tokens is False


# -- Plugin ----------------------------------------------------------------------------------------


def test_recipe_problems_default_is_none(registry):
    from adaptool.recipe import resolve_plugins, validate_recipe

    recipe = validate_recipe(
        {
            "model": {"name": "org/model"},
            "data": {"source": "org/data", "formatter": "text"},
            "output": {"dir": "/tmp/out"},
        }
    )
    plugins = resolve_plugins(recipe)
    assert Plugin().recipe_problems(recipe, plugins) == []
    assert Answer().recipe_problems(recipe, plugins) == []


def test_a_plugin_without_options_gets_its_schemas_defaults():
    class Shout(Plugin):
        name = "shout"

        class Options(Options):
            level: int = 3

    plugin = Shout()
    assert isinstance(plugin.options, Shout.Options)
    assert plugin.options.level == 3
    given = Shout.Options(level=5)
    assert Shout(given).options is given
    assert Plugin.version == "1"


# -- Quantizer -------------------------------------------------------------------------------------


class Half(Quantizer):
    name = "half"

    class Options(Options):
        bits: int = 16
        mode: str = "fast"

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        return {}


def test_describe_records_the_backend_and_every_option():
    assert Half().describe() == {"backend": "half", "bits": 16, "mode": "fast"}
    assert Half(Half.Options(bits=8)).describe() == {"backend": "half", "bits": 8, "mode": "fast"}


def test_round_trip_default_rounds_to_the_load_dtype_and_returns_float32():
    weight = torch.tensor([1.0 + 2**-10, 0.1, -3.0])
    out = Half().round_trip(weight, dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    assert torch.equal(out, weight.to(torch.bfloat16).float())
    assert out[0].item() == 1.0  # 1 + 2^-10 is not a bfloat16
    same = Half().round_trip(weight, dtype=torch.float32)
    assert torch.equal(same, weight)


def test_quantizer_defaults():
    model = object()
    assert Half().after_load(model) is model
    assert Half().quantized_layers(model) == set()
    assert Quantizer.quantized is True
    with pytest.raises(NotImplementedError):
        Quantizer().from_pretrained_kwargs()


# -- Options ---------------------------------------------------------------------------------------


class Column(Options):
    column: str = "text"
    count: int = 1
    flag: bool = False


def test_options_refuse_unknown_keys():
    with pytest.raises(ValidationError) as exc:
        Column.model_validate({"colum": "x"})
    assert exc.value.errors()[0]["type"] == "extra_forbidden"
    assert exc.value.errors()[0]["loc"] == ("colum",)


@pytest.mark.parametrize(
    ("key", "value"),
    [("column", 3), ("count", "1"), ("count", 1.0), ("flag", "true"), ("flag", 1)],
)
def test_options_are_strict_no_coercion(key, value):
    with pytest.raises(ValidationError):
        Column.model_validate({key: value})


def test_options_accept_the_right_types_and_are_frozen():
    options = Column.model_validate({"column": "quote", "count": 2, "flag": True})
    assert options.model_dump() == {"column": "quote", "count": 2, "flag": True}
    with pytest.raises(ValidationError):
        options.column = "other"
