"""adaptool plugins: what is installed, by whom."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adaptool import __version__
from adaptool.cli import build_app


def run(plugins, *args):
    return CliRunner().invoke(build_app(plugins), list(args))


COMMANDS = ["train", "merge", "generate", "eval", "push", "pull", "check", "plugins", "inspect"]


def test_plugins_json_lists_builtins_with_distribution(plugins):
    result = run(plugins, "plugins", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    by_name = {p["name"]: p for p in data["plugins"]}
    formatters = by_name["adaptool.builtin.formatters"]
    assert formatters["distribution"] == "adaptool" and formatters["version"] == __version__
    assert formatters["registers"] == {"formatter": ["quote-tags", "text", "instruction", "chat"]}
    assert by_name["adaptool.builtin.commands"]["registers"]["commands"] == [
        "train",
        "generate",
        "eval",
        "merge",
        "push",
        "pull",
        "inspect",
        "ls",
        "check",
        "plugins",
    ]
    assert data["problems"] == [] and data["blocked"] == []


def test_plugins_table(plugins):
    result = run(plugins, "plugins")
    assert result.exit_code == 0
    assert "quote-tags" in result.output and "bnb-4bit" in result.output
