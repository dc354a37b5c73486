"""adaptool inspect on the command line: a table, or JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adaptool.cli import build_app


def test_inspect_cli_table_and_json(adapter, plugins):
    table = CliRunner().invoke(build_app(plugins), ["inspect", str(adapter)])
    assert table.exit_code == 0, table.output
    for label in ("base model", "method", "trainable params", "formatter", "provenance"):
        assert label in table.output
    shown = CliRunner().invoke(build_app(plugins), ["inspect", str(adapter), "--json"])
    info = json.loads(shown.output)
    assert info["kind"] == "adapter" and info["method"] == "lora"
    assert info["manifest"]["kind"] == "adapter"


def test_inspect_cli_refuses_what_is_not_an_adapter(plugins, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = CliRunner().invoke(build_app(plugins), ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "holds neither an adapter" in result.output
