"""adaptool eval on the command line: the held-out rows by default, JSON, outputs file."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adaptool.cli import build_app
from tests.helpers import DATA


def test_eval_cli_defaults_to_the_held_out_rows_and_writes_outputs(adapter_dir, plugins, tmp_path):
    outputs = tmp_path / "out.jsonl"
    args = ["eval", str(adapter_dir), "--json", "--max-new-tokens", "3", "--outputs", outputs]
    result = CliRunner().invoke(build_app(plugins), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["metrics"]["rows"] == 2 and "held out at training" in report["data"]
    assert len(outputs.read_text().splitlines()) == 2


def test_eval_cli_names_its_flags_in_errors(adapter_dir, plugins):
    missing = CliRunner().invoke(
        build_app(plugins), ["eval", str(adapter_dir), "--data", str(DATA / "nope.jsonl")]
    )
    assert missing.exit_code == 2 and "--data: the file" in missing.output
    table = CliRunner().invoke(
        build_app(plugins),
        ["eval", str(adapter_dir), "--data", str(DATA / "quotes.jsonl"), "--limit", "2"],
    )
    assert table.exit_code == 0, table.output
    assert "tag_f1" in table.output and "rows" in table.output
