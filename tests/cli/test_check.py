"""adaptool check on the command line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adaptool.cli import build_app
from tests.helpers import (
    DATA,
    recipe_text,
    write_recipe,
)


def test_check_cli_prints_marked_examples(quotes_recipe, plugins):
    result = CliRunner().invoke(build_app(plugins), ["check", str(quotes_recipe)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Data: 8 rows" in out and "(train 6, eval 2)" in out
    assert (
        "“Be yourself; everyone else is already taken.” ->: «['be-yourself', 'honesty', "
        "'inspirational']</s>»" in out
    )
    assert "0 over max_length = 64" in out
    assert "The recipe is valid." in out


def test_check_cli_json(quotes_recipe, plugins):
    result = CliRunner().invoke(
        build_app(plugins),
        ["check", str(quotes_recipe), "--json", "-n", "1", "--set", "data.max_length=40"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rows"] == 8 and len(data["examples"]) == 1
    assert data["examples"][0]["trained"].startswith("['be-yourself")
    assert data["max_length"] == 40 and data["over_max_length"] > 0


def test_check_cli_bad_recipe_is_exit_2_without_traceback(tmp_path, tokenizer_dir, plugins):
    text = recipe_text(
        str(tokenizer_dir), str(DATA / "quotes.jsonl"), "quote-tag", extra="max_lenght = 3"
    )
    path = write_recipe(tmp_path, text)
    result = CliRunner().invoke(build_app(plugins), ["check", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"error: {path} has 2 problems:" in result.output
    assert (
        "data.formatter: unknown formatter 'quote-tag'. Did you mean 'quote-tags'?" in result.output
    )
    assert "did you mean 'max_length'?" in result.output


def test_check_cli_missing_column_is_exit_2(tmp_path, tokenizer_dir, plugins):
    path = write_recipe(tmp_path, recipe_text(str(tokenizer_dir), str(DATA / "text.csv")))
    result = CliRunner().invoke(build_app(plugins), ["check", str(path)])
    assert result.exit_code == 2
    assert "error: the dataset" in result.output and "Traceback" not in result.output
