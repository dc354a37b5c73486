"""Setting a run up: init from an adapter, bad data refused before anything is written, the
schedule."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from adaptool import DataError, RecipeError
from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.helpers import (
    DATA,
    recipe_file,
    records,
    run,
)


def test_init_adapter_starts_from_an_existing_adapter(tmp_path, tiny_bloom_dir, registry):
    first = run(tmp_path, tiny_bloom_dir, steps=4)
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=1, name="second.toml")
    overrides = ["output.dir=" + str(tmp_path / "second"), "training.learning_rate=1e-9"]
    recipe = load_recipe(path, overrides)
    second = train(recipe, init_adapter=first.output_dir)
    a = load_file(str(first.output_dir / "adapter_model.safetensors"))
    b = load_file(str(second.output_dir / "adapter_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # started from it
    manifest = json.loads((second.output_dir / "adaptool.json").read_text())
    assert manifest["peft"]["init_adapter"] == str(first.output_dir)


def test_missing_column_empty_data_and_unknown_formatter(tmp_path, tiny_bloom_dir, registry):
    path = recipe_file(tmp_path, tiny_bloom_dir, source=DATA / "text.csv")
    with pytest.raises(DataError, match=r"no column 'quote', 'tags'.*'quote-tags'"):
        train(load_recipe(path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    path = recipe_file(tmp_path, tiny_bloom_dir, source=empty, name="e.toml")
    with pytest.raises(DataError, match=r"empty\.jsonl has no rows"):
        train(load_recipe(path))
    with pytest.raises(RecipeError, match="unknown formatter 'tagger'"):
        load_recipe(path, ["data.formatter=tagger"])
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_constant_schedule_keeps_its_warmup(tmp_path, tiny_bloom_dir, registry):
    overrides = ['training.lr_scheduler="constant"', "training.warmup_steps=4"]
    result = run(tmp_path, tiny_bloom_dir, steps=6, overrides=overrides)
    lrs = [r["lr"] for r in records(result.output_dir) if "lr" in r]
    assert lrs[:4] == pytest.approx([3e-2 * k / 4 for k in (1, 2, 3, 4)])
    assert lrs[4:] == pytest.approx([3e-2, 3e-2])


def test_a_null_or_wrongly_typed_field_names_row_column_and_file_or_is_skipped(
    tmp_path, tiny_bloom_dir, plugins
):
    """Never trained as the text "None" or a Python repr: an error naming the row (as in the
    file), the column and the file — or, with data.on_bad_row = "skip", a counted skip."""
    import json

    from adaptool import DataError
    from adaptool.artifacts.manifest import read_manifest

    rows = [json.loads(line) for line in (DATA / "quotes.jsonl").read_text().splitlines()]
    rows[2]["tags"] = None
    rows[5]["quote"] = {"text": "a dict where text belongs"}
    source = tmp_path / "bad.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=2, source=source)
    with pytest.raises(DataError) as err:
        train(load_recipe(path))
    message = str(err.value)
    assert f"of {source}" in message and "on_bad_row" in message
    assert ("row 3" in message and "'tags' is empty (null)" in message) or (
        "row 6" in message and "'quote' holds dict" in message
    )
    assert not (tmp_path / "out").exists()  # refused before anything is written

    done = train(load_recipe(path, ['data.on_bad_row="skip"']))
    manifest = read_manifest(done.output_dir)
    assert manifest.data["bad_rows_skipped"] == 2
    assert manifest.data["train_rows"] + manifest.data["eval_rows"] == len(rows) - 2
    assert all("None" not in s["completion"] for s in manifest.samples)


def test_a_skipped_bad_row_is_not_among_the_held_out_rows(tmp_path, tiny_bloom_dir, plugins):
    """With on_bad_row = "skip", heldout.jsonl holds the held-out rows the formatter takes, so
    `eval` without --data scores them instead of failing on the skipped one."""
    import json

    from adaptool.data import split_rows
    from adaptool.evaluate import evaluate

    rows = [json.loads(line) for line in (DATA / "quotes.jsonl").read_text().splitlines()]
    split = split_rows(_FakeRows(len(rows)), 0.25, 7)  # the recipe's eval_fraction and seed
    rows[split.eval_positions[0]]["tags"] = None
    source = tmp_path / "bad.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=1, source=source)
    done = train(load_recipe(path, ['data.on_bad_row="skip"']))
    held = (done.output_dir / "heldout.jsonl").read_text().splitlines()
    assert len(held) == len(split.eval_positions) - 1
    assert all(json.loads(line)["tags"] is not None for line in held)
    assert evaluate(done.output_dir, max_new_tokens=2).metrics["rows"] == len(held)


class _FakeRows:
    """Stands in for a dataset where only the count and select() matter."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def select(self, indices):
        return list(indices)


MIXTURE = """
[model]
name = "{base}"
dtype = "float32"

[data]
eval_fraction = 0.1
max_length = 64
mix = "weights"

[[data.sources]]
source = "alice/quotes-a"
formatter = "quote-tags"
weight = 0.75

[[data.sources]]
source = "alice/quotes-b"
revision = "{pinned}"
formatter = "quote-tags"
weight = 0.25

[training]
max_steps = 1
batch_size = 2

[output]
dir = "{out}"
"""


def test_a_mixture_of_two_hub_sources_trains_and_pins_both_revisions(
    tmp_path, hub, tiny_bloom_dir, plugins
):
    import json
    import math

    from adaptool.recipe import load_recipe
    from adaptool.training.run import train
    from tests.helpers import GOOD
    from tests.hubserver import hub_env

    def quotes(prefix, n):
        lines = (json.dumps({"quote": f"{prefix} {i}.", "tags": ["t"]}) for i in range(n))
        return {"train.jsonl": "".join(line + "\n" for line in lines).encode()}

    a = hub.put_files("alice/quotes-a", quotes("A", 200), repo_type="dataset")
    b = hub.put_files("alice/quotes-b", quotes("B", 200), repo_type="dataset")
    hub.put_files("alice/quotes-b", quotes("Newer", 50), repo_type="dataset")  # not pinned
    path = tmp_path / "mix.toml"
    path.write_text(MIXTURE.format(base=tiny_bloom_dir, pinned=b, out=tmp_path / "out"))
    with hub_env(hub, GOOD, tmp_path / "home"):
        result = train(load_recipe(path))
    sources = result.manifest.data["sources"]
    assert [s["commit"] for s in sources] == [a, b]
    assert [s["rows"] for s in sources] == [200, 200]  # b at its pinned commit
    n = sum(s["mixed_examples"] for s in sources)
    assert n == 360 and abs(sources[0]["mixed_examples"] - 0.75 * n) <= 3 * math.sqrt(
        n * 0.75 * 0.25
    )
    assert result.manifest.data["mix"] == "weights"
