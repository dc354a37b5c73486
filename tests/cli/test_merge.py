"""adaptool merge on the command line: single adapters and combinations."""

from __future__ import annotations

import json

from tests.helpers import (
    trained,
)


def test_cli_merge_and_generate_from_the_merged_model(tmp_path, tiny_bloom_dir, plugins):
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    adapter = trained(tmp_path, tiny_bloom_dir)
    app = build_app(plugins)
    result = CliRunner().invoke(
        app, ["merge", str(adapter), "--output", str(tmp_path / "m"), "--dtype", "fp32"]
    )
    assert result.exit_code == 0, result.output
    assert "verified on" in result.output and "max |Δ logits|" in result.output
    out_merged = CliRunner().invoke(
        app,
        ["generate", str(tmp_path / "m"), "Knowledge is power.", "--json", "--max-new-tokens", "6"],
    )
    out_adapter = CliRunner().invoke(
        app, ["generate", str(adapter), "Knowledge is power.", "--json", "--max-new-tokens", "6"]
    )
    merged_gen, adapter_gen = json.loads(out_merged.output), json.loads(out_adapter.output)
    assert merged_gen["prompt"] == "“Knowledge is power.” ->: "  # formatter from the manifest
    assert merged_gen["output"] == adapter_gen["output"]
    again = CliRunner().invoke(app, ["merge", str(adapter), "--output", str(tmp_path / "m")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_cli_combines_adapters(tmp_path, plugins, two_adapters):
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    a, b = two_adapters
    result = CliRunner().invoke(
        build_app(plugins),
        [
            "merge",
            "--adapter",
            str(a),
            "--adapter",
            str(b),
            "--weight",
            "0.7",
            "--weight",
            "0.3",
            "--combine",
            "linear",
            "--output",
            str(tmp_path / "lin"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "combined 2 adapters (linear, weights 0.7, 0.3)" in result.output
    assert (tmp_path / "lin" / "adapter_model.safetensors").is_file()
    args = ["merge", "--adapter", str(a), "--adapter", str(b), "--output", str(tmp_path / "t")]
    ties = CliRunner().invoke(build_app(plugins), [*args, "--combine", "ties"])
    assert ties.exit_code == 2 and "ties needs --density" in ties.output, ties.output
    unknown = CliRunner().invoke(build_app(plugins), [*args, "--combine", "average"])
    assert unknown.exit_code == 2 and "'average' is not one of" in unknown.output
