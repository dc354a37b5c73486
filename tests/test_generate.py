"""generate and eval on an adapter trained in the test (tiny BLOOM, real peft, real training)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adaptool import AdapterError
from adaptool.artifacts.loading import open_target
from adaptool.cli import build_app
from adaptool.evaluate import evaluate
from adaptool.generate import build_prompts, generate
from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.conftest import DATA
from tests.test_train import recipe_file

QUOTES = [
    "Be yourself.",
    "Knowledge is power.",
    "A journey of a thousand miles begins with one.",
    "Brevity.",
    "Well done is better than well said, they say, and so it is.",
]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_bloom_dir):
    from adaptool.plugins import load_plugins, use_plugins

    use_plugins(load_plugins(entry_points=False))
    tmp = tmp_path_factory.mktemp("adapter")
    path = recipe_file(tmp, tiny_bloom_dir, steps=30)
    return train(load_recipe(path)).output_dir


def test_batched_generation_equals_one_by_one(adapter_dir, registry):
    target = open_target(adapter_dir)
    prompts = build_prompts(QUOTES, target.formatter, target.tokenizer, raw=False)
    batched = generate(target.model, target.tokenizer, prompts, max_new_tokens=12, batch_size=5)
    single = [generate(target.model, target.tokenizer, [p], max_new_tokens=12)[0] for p in prompts]
    assert [g.output for g in batched] == [g.output for g in single]
    assert [g.tokens for g in batched] == [g.tokens for g in single]
    assert all(g.prompt.endswith(" ->: ") for g in batched)


def test_generation_stops_at_eos_and_counts_tokens(adapter_dir, registry):
    target = open_target(adapter_dir)
    [result] = generate(
        target.model,
        target.tokenizer,
        ["“Knowledge is power.” ->: "],
        max_new_tokens=40,
        formatter=target.formatter,
    )
    assert result.tokens <= 40
    if result.stopped:
        assert "</s>" not in result.output
    assert result.parsed == target.formatter.parse(result.output)


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


def test_eval_scores_with_the_formatter(adapter_dir, registry):
    result = evaluate(
        adapter_dir,
        data=DATA / "quotes.jsonl",
        max_new_tokens=16,
        compare_base=True,
    )
    assert result.metrics["rows"] == 8
    assert set(result.metrics) >= {
        "tag_precision",
        "tag_recall",
        "tag_f1",
        "parses",
        "stopped_at_eos",
        "parses_and_stops",
    }
    assert all(0 <= v <= 1 for k, v in result.metrics.items() if k != "rows")
    assert result.base_metrics is not None and result.base_metrics["rows"] == 8
    default_split = evaluate(adapter_dir, max_new_tokens=4)
    assert default_split.metrics["rows"] == 2  # the recipe's eval split (25 % of 8)


def test_quote_tags_score_counts_tags(registry, tokenizer):
    from adaptool.generate import Generation

    fmt = registry.get("formatter", "quote-tags")()
    rows = [
        {"quote": "q", "tags": ["a", "b"]},
        {"quote": "q", "tags": ["c"]},
        {"quote": "q", "tags": ["d"]},
    ]
    outs = [
        Generation("p", "['a', 'x']", 5, True, 0.1),
        Generation("p", "['c']", 3, True, 0.1),
        Generation("p", "['d'] and more", 9, False, 0.1),
    ]
    score = fmt.score(rows, outs, tokenizer)
    assert score["tag_precision"] == pytest.approx(2 / 3)
    assert score["tag_recall"] == pytest.approx(2 / 4)
    assert score["tag_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert score["parses"] == pytest.approx(2 / 3)
    assert score["stopped_at_eos"] == pytest.approx(2 / 3)
    assert score["exact_tag_set"] == pytest.approx(1 / 3)


def test_targets_that_cannot_be_opened(tmp_path, registry, plugins):
    with pytest.raises(AdapterError, match="not a directory"):
        open_target(tmp_path / "nope")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(AdapterError, match="only pickle weights"):
        open_target(pickled)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    result = CliRunner().invoke(build_app(plugins), ["generate", str(broken), "hi"])
    assert result.exit_code == 2 and "not a valid peft adapter config" in result.output
