"""Every recipe shipped in recipes/ loads and validates; the shipped demo data keeps its rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptool.recipe import load_recipe
from tests.helpers import REPO

RECIPES = sorted((REPO / "recipes").glob("*.toml"))


def test_there_are_recipes():
    assert {p.name for p in RECIPES} >= {
        "tiny-tagger.toml",
        "bloom-tagger.toml",
        "bloom-qlora.toml",
    }


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates_and_says_how_to_run_it(path, registry):
    recipe = load_recipe(path)
    assert f"adaptool train recipes/{path.name}" in path.read_text(), "header must give the command"
    assert recipe.output.dir.startswith(str(REPO / "runs"))
    if recipe.data.is_local:  # shipped data lives beside the recipes
        assert Path(recipe.data.source).is_relative_to(REPO / "recipes" / "data")


def test_bloom_tagger_is_the_reference_notebook(registry):
    r = load_recipe(REPO / "recipes" / "bloom-tagger.toml")
    assert r.model.name == "bigscience/bloom-7b1" and r.quantization.backend == "bnb-8bit"
    assert (r.peft.method, r.peft.r, r.peft.alpha, r.peft.dropout, r.peft.bias) == (
        "lora",
        16,
        32,
        0.05,
        "none",
    )
    assert (r.data.source, r.data.formatter) == ("Abirate/english_quotes", "quote-tags")
    t = r.training
    assert (
        t.batch_size,
        t.gradient_accumulation_steps,
        t.warmup_steps,
        t.max_steps,
        t.learning_rate,
        t.precision,
    ) == (4, 4, 100, 200, 2e-4, "fp16")


def test_bloom_qlora_is_the_qlora_script(registry):
    r = load_recipe(REPO / "recipes" / "bloom-qlora.toml")
    assert r.quantization.backend == "bnb-4bit"
    assert r.quantization.options == {
        "quant_type": "nf4",
        "double_quant": True,
        "compute_dtype": "bfloat16",
        "skip_modules": None,
        "quant_storage": "auto",
    }


def test_tiny_tagger_runs_offline(registry):
    r = load_recipe(REPO / "recipes" / "tiny-tagger.toml")
    assert r.model.is_local and r.data.is_local
    assert (REPO / "recipes" / "assets" / "tiny-bloom" / "tokenizer.json").is_file()


def rows(name):
    path = REPO / "recipes" / "data" / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_demo_quotes_follow_their_rules():
    train, heldout = rows("quotes-train.jsonl"), rows("quotes-heldout.jsonl")
    assert len(train) >= 400 and len(heldout) >= 60
    key = lambda r: "".join(c for c in r["quote"].lower() if c.isalnum())  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in heldout}, "held-out quote in training"
    assert len({key(r) for r in train}) == len(train)
    vocabulary = {t for r in train for t in r["tags"]}
    for row in train + heldout:
        assert set(row) == {"quote", "author", "tags"}
        assert row["quote"].startswith("“") and row["quote"].endswith("”")
        assert 1 <= len(row["tags"]) <= 4 and row["tags"] == sorted(row["tags"])
        assert set(row["tags"]) <= vocabulary


def test_the_offline_default_trains_on_its_shipped_base(tmp_path, plugins):
    """A short run of recipes/tiny-tagger.toml as shipped: the committed base loads in 8-bit,
    the adapter trains, the loss falls, and the result loads back for generation."""
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    out = tmp_path / "tiny"
    result = CliRunner().invoke(
        build_app(plugins),
        [
            "train",
            str(REPO / "recipes" / "tiny-tagger.toml"),
            "--output",
            str(out),
            "--set",
            "training.max_steps=60",
            "--set",
            "training.logging_steps=10",
            "--set",
            "training.warmup_steps=5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trainable params:" in result.output
    losses = [
        json.loads(line)["loss"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert losses[-1] < 0.7 * losses[0], losses
    manifest = json.loads((out / "adaptool.json").read_text())
    assert manifest["quantization"]["backend"] == "bnb-8bit"
    generated = CliRunner().invoke(
        build_app(plugins),
        ["generate", str(out), "Knowledge is power.", "--json", "--max-new-tokens", "24"],
    )
    assert generated.exit_code == 0, generated.output
    assert json.loads(generated.output)["prompt"] == "“Knowledge is power.” ->: "
