"""evaluate(): generation scored by the adapter's formatter."""

from __future__ import annotations

import json

import pytest

from adaptool import AdapterError, AdaptoolError
from adaptool.evaluate import evaluate
from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.helpers import DATA, recipe_file


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


def test_eval_without_data_scores_the_rows_held_out_at_training(tmp_path, tiny_bloom_dir, plugins):
    """The held-out rows are the ones recorded when the adapter was trained, even after the
    data source changed: they never overlap the rows it was trained on."""
    from adaptool.artifacts.artifact import Artifact
    from adaptool.artifacts.manifest import read_manifest
    from adaptool.data import load_file
    from adaptool.evaluate import heldout_rows

    source = tmp_path / "quotes.jsonl"
    lines = (DATA / "quotes.jsonl").read_text(encoding="utf-8").splitlines()
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=2, source=source)
    adapter = train(load_recipe(path, [f"output.dir={tmp_path / 'a'}"])).output_dir
    manifest = read_manifest(adapter)
    assert manifest.heldout["rows"] == 2 and manifest.heldout["source"] == str(source)
    held_out = [json.loads(line)["quote"] for line in (adapter / "heldout.jsonl").open()]
    trained_on = {row["quote"] for row in load_file(source)} - set(held_out)

    # the source changes after training: reversed, so a re-split would pick other rows
    source.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    rows = heldout_rows(Artifact.read(adapter))
    assert [row["quote"] for row in rows] == held_out
    assert not set(held_out) & trained_on
    result = evaluate(adapter, max_new_tokens=2)
    assert result.metrics["rows"] == 2 and "held out at training" in result.data
    quote_tags = plugins.registry.get("formatter", "quote-tags")()
    expected = [quote_tags.generation_prompt({"quote": q}, None) for q in held_out]
    assert [g.prompt for g in result.generations] == expected

    # a changed copy of the held-out rows is refused, not silently used
    (adapter / "heldout.jsonl").write_text(lines[0] + "\n", encoding="utf-8")
    with pytest.raises(AdapterError, match="has changed since"):
        evaluate(adapter, max_new_tokens=2)


def test_eval_without_data_needs_a_held_out_split(tmp_path, tiny_bloom_dir, plugins):
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=1)
    adapter = train(
        load_recipe(path, [f"output.dir={tmp_path / 'a'}", "data.eval_fraction=0.0"])
    ).output_dir
    assert not (adapter / "heldout.jsonl").exists()
    with pytest.raises(AdaptoolError, match=r"held out no rows .* pass data=FILE"):
        evaluate(adapter, max_new_tokens=2)
