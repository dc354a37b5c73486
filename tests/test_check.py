"""``adaptool check`` on local datasets with a tiny tokenizer built in the test."""

from __future__ import annotations

import pytest

from adaptool import DataError, ModelError
from adaptool.check import check
from adaptool.recipe import load_recipe
from adaptool.testing import make_tokenizer
from tests.helpers import (
    DATA,
    corpus,
    recipe_text,
    write_recipe,
)


def test_check_reports_examples_counts_and_masking(quotes_recipe, registry, tokenizer):
    report = check(load_recipe(quotes_recipe))
    assert (report.rows, report.train_rows, report.eval_rows) == (8, 6, 2)
    assert report.formatter == "quote-tags"
    assert len(report.examples) == 3
    first = report.examples[0]
    assert first.segments == [
        ("“Be yourself; everyone else is already taken.” ->: ", False),
        ("['be-yourself', 'honesty', 'inspirational']</s>", True),
    ]
    completion_ids = tokenizer("['be-yourself', 'honesty', 'inspirational']")["input_ids"]
    assert first.trained_tokens == first.completion_tokens == len(completion_ids) + 1
    assert report.over_max_length == 0 and report.without_eos == 0 and report.fully_masked == 0
    assert report.warnings == []
    assert len(report.token_counts) == 8


def test_check_counts_truncation_and_lost_eos(tmp_path, tokenizer_dir, registry):
    path = write_recipe(tmp_path, recipe_text(str(tokenizer_dir), str(DATA / "quotes.jsonl")))
    recipe = load_recipe(path, ["data.max_length=18"])
    report = check(recipe)
    over = sum(n >= 18 for n in report.token_counts)
    assert report.over_max_length == over > 0
    assert report.without_eos >= report.over_max_length - report.fully_masked
    assert any("exceed max_length = 18" in w for w in report.warnings)
    assert any("do not end with a trained EOS" in w for w in report.warnings)


def test_check_warns_when_every_label_is_masked(tmp_path, tokenizer_dir, registry):
    path = write_recipe(tmp_path, recipe_text(str(tokenizer_dir), str(DATA / "quotes.jsonl")))
    report = check(load_recipe(path, ["data.max_length=4"]))
    assert report.fully_masked == 8
    assert any("8 of 8 examples have every label masked" in w for w in report.warnings)


def test_check_warns_without_an_eos_token(tmp_path, registry):
    tok_dir = tmp_path / "no-eos"
    make_tokenizer(tok_dir, corpus(), vocab_size=300, eos=False)
    path = write_recipe(tmp_path, recipe_text(str(tok_dir), str(DATA / "text.csv"), "text"))
    report = check(load_recipe(path, ["data.chunk=false"]))  # one example per document
    assert report.without_eos == 3
    assert any("no EOS token" in w for w in report.warnings)


def test_check_missing_column_and_empty_data(tmp_path, tokenizer_dir, registry):
    path = write_recipe(tmp_path, recipe_text(str(tokenizer_dir), str(DATA / "text.csv")))
    with pytest.raises(DataError) as err:
        check(load_recipe(path))
    assert "'quote'" in str(err.value) and "quote-tags" in str(err.value)
    assert "text.csv" in str(err.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    path = write_recipe(tmp_path, recipe_text(str(tokenizer_dir), str(empty)), "e.toml")
    with pytest.raises(DataError, match="has no rows"):
        check(load_recipe(path))


def test_check_missing_file_and_bad_tokenizer(tmp_path, tokenizer_dir, registry):
    path = write_recipe(tmp_path, recipe_text(str(tokenizer_dir), "missing.jsonl"))
    with pytest.raises(DataError, match=r"missing\.jsonl does not exist"):
        check(load_recipe(path))
    (tmp_path / "empty-model").mkdir()
    path = write_recipe(
        tmp_path, recipe_text("./empty-model", str(DATA / "quotes.jsonl")), "m.toml"
    )
    with pytest.raises(ModelError, match="could not load the tokenizer"):
        check(load_recipe(path))
