"""The sharegpt plugin's own tests, on adaptool's pytest plugin: its fixtures (a fresh plugin
set with this plugin registered, a tiny tokenizer and model, the CLI in-process) and its
formatter contract check."""

from __future__ import annotations

import json

import adaptool_sharegpt
import pytest
from adaptool_sharegpt import ShareGPT

from adaptool import DataError
from adaptool.testing import assert_formatter_contract

ROWS = [
    {
        "conversations": [
            {"from": "human", "value": "Name a colour."},
            {"from": "gpt", "value": "Blue."},
        ]
    },
    {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Two plus two?"},
            {"from": "gpt", "value": "Four."},
        ]
    },
]


def test_the_formatter_keeps_adaptools_contract(adaptool_tokenizer):
    assert_formatter_contract(ShareGPT(), ROWS, adaptool_tokenizer)


def test_the_last_gpt_turn_is_the_completion(adaptool_tokenizer):
    example = ShareGPT().format(ROWS[1], adaptool_tokenizer)
    assert example.completion.startswith("Four.")
    assert "Two plus two?" in example.prompt and "Be brief." in example.prompt


def test_an_unknown_speaker_is_bad_data(adaptool_tokenizer):
    row = {"conversations": [{"from": "robot", "value": "beep"}]}
    with pytest.raises(DataError, match="unknown speaker 'robot'"):
        ShareGPT().format(row, adaptool_tokenizer)


def test_check_runs_a_recipe_with_the_plugin(
    tmp_path, adaptool_plugins, adaptool_model_dir, adaptool_cli
):
    plugins = adaptool_plugins(adaptool_sharegpt)
    assert "sharegpt" in plugins.registry.names("formatter")
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS * 4))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'[model]\nname = "{adaptool_model_dir}"\n'
        f'[data]\nsource = "{data}"\nformatter = "sharegpt"\n'
        f'[output]\ndir = "{tmp_path / "out"}"\n'
    )
    result = adaptool_cli("check", recipe, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["formatter"] == "sharegpt" and report["rows"] == 8
