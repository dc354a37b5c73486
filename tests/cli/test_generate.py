"""adaptool generate on the command line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adaptool.cli import build_app


def test_cli_generate_json_builds_the_formatter_prompt(adapter_dir, plugins):
    app = build_app(plugins)
    result = CliRunner().invoke(
        app,
        [
            "generate",
            str(adapter_dir),
            "Be yourself.",
            "Brevity.",
            "--json",
            "--max-new-tokens",
            "8",
            "--compare-base",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [r["input"] for r in lines] == ["Be yourself.", "Brevity."]
    assert lines[0]["prompt"] == "“Be yourself.” ->: "
    assert {"output", "tokens", "seconds", "stopped", "parsed", "base"} <= set(lines[0])
    assert lines[0]["base"]["prompt"] == lines[0]["prompt"]
    raw = CliRunner().invoke(
        app,
        ["generate", str(adapter_dir), "plain text", "--raw", "--json", "--max-new-tokens", "4"],
    )
    assert json.loads(raw.output)["prompt"] == "plain text"


def test_cli_generate_prompts_file(adapter_dir, plugins, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"quote": "“Knowledge is power.”", "tags": []}) + "\n")
    result = CliRunner().invoke(
        build_app(plugins),
        ["generate", str(adapter_dir), "--prompts-file", str(rows), "--max-new-tokens", "4"],
    )
    assert result.exit_code == 0, result.output
    assert "“Knowledge is power.” ->: " in result.output
