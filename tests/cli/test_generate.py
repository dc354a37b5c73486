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


def test_small_bad_inputs_are_clear_errors_before_any_work(adapter_dir, plugins, tmp_path):
    """An empty raw prompt, a seed beyond 64 bits, JSON numbers as rows, a non-UTF-8 prompts
    file, and eval --outputs pointing at a folder: exit 2, no traceback."""
    app = build_app(plugins)

    def run(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return result.output

    assert "nothing to continue from" in run("generate", adapter_dir, "", "--raw")
    assert "--seed" in run("generate", adapter_dir, "x", "--seed", str(2**64))
    numbers = tmp_path / "rows.jsonl"
    numbers.write_text('{"quote": "Be yourself."}\n42\n')
    assert "line 2: a row (a JSON object) or a prompt" in run(
        "generate", adapter_dir, "--prompts-file", numbers
    )
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    assert "not UTF-8 text (byte 3 is 0xe9)" in run(
        "generate", adapter_dir, "--prompts-file", latin
    )
    assert "is a folder" in run("eval", adapter_dir, "--outputs", tmp_path)
