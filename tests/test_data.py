"""Datasets: load_rows / load_file on local files (with DataErrors naming the file), the eval
split, and check_columns against a formatter."""

from __future__ import annotations

import json

import pytest

from adaptool.builtin.formatters import QuoteTags
from adaptool.data import check_columns, load_file, load_rows, split_eval
from adaptool.errors import DataError
from adaptool.recipe.schema import DataSection
from tests.helpers import DATA


def section(source, **kw) -> DataSection:
    return DataSection(source=str(source), formatter="quote-tags", **kw)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def rows_of(n: int):
    import datasets

    return datasets.Dataset.from_dict({"i": list(range(n))})


# -- load_rows / load_file -----------------------------------------------------------------------


def test_load_rows_reads_a_local_jsonl_file():
    expected = lines(DATA / "quotes.jsonl")
    rows = load_rows(section(DATA / "quotes.jsonl"))
    assert len(rows) == len(expected)
    assert rows.column_names == ["quote", "author", "tags"]
    assert rows[0] == expected[0]


def test_load_rows_reads_a_local_csv_file():
    rows = load_rows(section(DATA / "text.csv"))
    assert rows.column_names == ["text", "source"]
    assert rows[1] == {"text": "Call me Ishmael.", "source": "melville"}


def test_load_rows_honours_a_sliced_train_split():
    rows = load_rows(section(DATA / "quotes.jsonl", split="train[:2]"))
    assert len(rows) == 2
    assert rows[1] == lines(DATA / "quotes.jsonl")[1]


def test_a_missing_file_is_a_data_error_naming_it(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as exc:
        load_rows(section(path))
    assert str(path) in str(exc.value)
    assert "does not exist" in str(exc.value)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_file_is_a_data_error_naming_it(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_rows(section(path))
    assert str(path) in str(exc.value)
    assert "no rows" in str(exc.value)


def test_an_unsupported_suffix_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_text('{"quote": "x", "tags": []}\n', encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_rows(section(path))
    assert str(path) in str(exc.value)
    assert ".jsonl" in str(exc.value) and ".csv" in str(exc.value)


def test_load_file_reads_by_suffix_and_refuses_others(tmp_path):
    rows = load_file(DATA / "instructions.jsonl")
    assert len(rows) == len(lines(DATA / "instructions.jsonl"))
    assert "instruction" in rows.column_names
    other = tmp_path / "rows.yaml"
    other.write_text("a: 1\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_file(other)
    assert str(other) in str(exc.value)


def test_load_file_turns_a_parse_failure_into_a_data_error(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"quote": "x", "tags": [\nnot json at all\n', encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_file(path)
    assert str(path) in str(exc.value)
    assert "could not read" in str(exc.value)


# -- split_eval ------------------------------------------------------------------------------------


def test_fraction_zero_keeps_every_row_for_training():
    rows = rows_of(5)
    train, held = split_eval(rows, 0.0, seed=1)
    assert train is rows
    assert held is None


def test_at_least_one_eval_row():
    train, held = split_eval(rows_of(3), 0.01, seed=1)
    assert len(held) == 1
    assert len(train) == 2


def test_split_is_disjoint_covers_every_row_and_rounds_the_fraction():
    train, held = split_eval(rows_of(20), 0.25, seed=3)
    assert len(held) == 5
    assert len(train) == 15
    assert set(train["i"]).isdisjoint(held["i"])
    assert sorted([*train["i"], *held["i"]]) == list(range(20))


def test_split_is_deterministic_for_a_seed():
    first = list(split_eval(rows_of(30), 0.2, seed=7)[1]["i"])
    again = list(split_eval(rows_of(30), 0.2, seed=7)[1]["i"])
    assert first == again
    others = [list(split_eval(rows_of(30), 0.2, seed=s)[1]["i"]) for s in (8, 9, 10)]
    assert any(o != first for o in others)


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_rows_cannot_be_split(n):
    with pytest.raises(DataError) as exc:
        split_eval(rows_of(n), 0.5, seed=1)
    assert "at least 2 rows" in str(exc.value)
    assert f"has {n}" in str(exc.value)


# -- check_columns ---------------------------------------------------------------------------------


def test_check_columns_accepts_rows_with_the_formatters_columns():
    rows = load_rows(section(DATA / "quotes.jsonl"))
    check_columns(rows, QuoteTags(), "quotes.jsonl")  # no error


def test_a_missing_column_names_it_the_formatter_and_the_columns_found():
    rows = load_rows(section(DATA / "text.csv"))
    with pytest.raises(DataError) as exc:
        check_columns(rows, QuoteTags(), "text.csv")
    message = str(exc.value)
    assert "'quote', 'tags'" in message
    assert "formatter 'quote-tags'" in message
    assert "columns found: text, source" in message
    assert "text.csv" in message


def test_a_renamed_column_option_is_what_is_checked():
    import datasets

    rows = datasets.Dataset.from_dict({"line": ["x"], "tags": [["a"]]})
    check_columns(rows, QuoteTags(QuoteTags.Options(quote_column="line")), "mem")
    with pytest.raises(DataError) as exc:
        check_columns(rows, QuoteTags(), "mem")
    assert "no column 'quote'," in str(exc.value)


def test_an_empty_dataset_is_refused():
    import datasets

    rows = datasets.Dataset.from_dict({"quote": [], "tags": []})
    with pytest.raises(DataError) as exc:
        check_columns(rows, QuoteTags(), "empty-source")
    assert "empty-source has no rows" in str(exc.value)
    assert "quote-tags" in str(exc.value)


def test_a_non_utf8_data_file_names_the_file_and_the_byte(tmp_path):
    from adaptool.data import load_file

    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl is not UTF-8 text: byte 28 is 0xe9"):
        load_file(path)


CONFIGS = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train.jsonl
- config_name: other
  data_files:
  - split: train
    path: other/train.jsonl
---
# quotes
"""


def quotes(prefix: str, n: int) -> bytes:
    lines = (json.dumps({"quote": f"{prefix} {i}.", "tags": ["t"]}) for i in range(n))
    return "".join(line + "\n" for line in lines).encode()


def test_a_hub_dataset_with_a_config_and_a_revision_is_loaded_and_pinned(
    tmp_path, hub, tiny_bloom_dir, plugins
):
    """gsm8k-style configs and a revision: the config's rows at that commit; with no revision,
    the commit main resolves to is what is loaded and pinned in the manifest."""
    from adaptool.data import dataset_commit, load_rows
    from adaptool.recipe import load_recipe
    from adaptool.recipe.schema import DataSection
    from adaptool.training.run import train
    from tests.helpers import GOOD, recipe_file
    from tests.hubserver import hub_env

    files = {"README.md": CONFIGS.encode(), "main/train.jsonl": quotes("Main", 10)}
    first = hub.put_files(
        "alice/quotes", files | {"other/train.jsonl": quotes("Other", 5)}, repo_type="dataset"
    )
    second = hub.put_files(
        "alice/quotes", {"main/train.jsonl": quotes("Newer", 12)}, repo_type="dataset"
    )
    with hub_env(hub, GOOD, tmp_path / "home"):
        pinned = DataSection(
            source="alice/quotes", formatter="quote-tags", config="main", revision=first
        )
        rows = load_rows(pinned)
        assert len(rows) == 10 and rows[0]["quote"] == "Main 0."
        other = DataSection(source="alice/quotes", formatter="quote-tags", config="other")
        assert len(load_rows(other)) == 5
        latest = DataSection(source="alice/quotes", formatter="quote-tags", config="main")
        assert dataset_commit(latest) == second and len(load_rows(latest)) == 12
        path = recipe_file(tmp_path, tiny_bloom_dir, source="alice/quotes", steps=1)
        recipe = load_recipe(path, ["data.config=main"])
        manifest = train(recipe).manifest
    assert (manifest.data["config"], manifest.data["commit"]) == ("main", second)
    assert manifest.data["revision"] is None


def test_a_config_or_revision_for_a_local_file_is_refused(tmp_path):
    from adaptool.data import load_rows
    from adaptool.recipe.schema import DataSection

    local = DataSection(source=str(DATA / "quotes.jsonl"), formatter="quote-tags", revision="v1")
    with pytest.raises(DataError, match="is a local file: remove them"):
        load_rows(local)


def test_a_glob_reads_every_matching_file_in_order_and_txt_reads_paragraphs(tmp_path, registry):
    from adaptool.recipe import load_recipe

    for name, quotes in (("b.jsonl", ["B1"]), ("a.jsonl", ["A1", "A2"]), ("c.csv", [])):
        text = "".join(json.dumps({"quote": q, "tags": ["t"]}) + "\n" for q in quotes)
        (tmp_path / name).write_text(text or "quote,tags\n")
    rows = load_rows(DataSection(source=str(tmp_path / "*.jsonl"), formatter="quote-tags"))
    assert [r["quote"] for r in rows] == ["A1", "A2", "B1"]
    with pytest.raises(DataError, match="matches files of several types"):
        load_rows(DataSection(source=str(tmp_path / "?.*"), formatter="quote-tags"))
    with pytest.raises(DataError, match="matches no file"):
        load_rows(DataSection(source=str(tmp_path / "*.parquet"), formatter="quote-tags"))
    book = tmp_path / "book.txt"
    book.write_text("First paragraph,\non two lines.\n\nSecond paragraph.\n")
    paragraphs = load_rows(DataSection(source=str(book), formatter="text"))
    assert [r["text"].strip() for r in paragraphs] == [
        "First paragraph,\non two lines.",
        "Second paragraph.",
    ]
    # a recipe's glob resolves against the recipe's folder
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[model]\nname = "m"\n[output]\ndir = "o"\n'
        '[data]\nsource = "*.jsonl"\nformatter = "quote-tags"\n'
    )
    assert load_recipe(recipe).data.source == str(tmp_path / "*.jsonl")


def test_offline_a_hub_dataset_is_read_from_the_cache_without_a_pin(monkeypatch):
    from huggingface_hub import constants

    from adaptool.data import dataset_commit

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert dataset_commit(DataSection(source="alice/quotes", formatter="quote-tags")) is None


def test_a_globs_split_is_applied(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text(json.dumps({"quote": name, "tags": []}) + "\n")
    source = str(tmp_path / "*.jsonl")
    assert (
        len(load_rows(DataSection(source=source, formatter="quote-tags", split="train[:1]"))) == 1
    )


def test_an_eval_fraction_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(DataError, match="leaving none to train on"):
        split_eval(rows_of(3), 0.9, seed=1)
