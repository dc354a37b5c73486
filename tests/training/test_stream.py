"""A streamed source (data.streaming = true): trained without a table, in batches read as
training goes, length-grouped within a bounded window, epoch after epoch; a resumed run sees
the batches an uninterrupted one does; what a stream cannot have is refused in the recipe."""

from __future__ import annotations

import json

import pytest

from adaptool.errors import DataError, RecipeError
from adaptool.recipe import load_recipe
from adaptool.recipe.schema import DataSection
from adaptool.training.run import train
from adaptool.training.stream import StreamFeed
from tests.helpers import DATA, InterruptAt, make, recipe_file, records

STREAM = ["data.streaming=true", "data.eval_fraction=0.0"]


def _feed(registry, tokenizer, path=DATA / "quotes.jsonl", **kw):
    data = DataSection(source=str(path), formatter="quote-tags", max_length=96, **kw)
    formatter = make(registry, "formatter", "quote-tags")
    return StreamFeed(data, formatter, tokenizer, batch_size=2, seed=7)


def test_a_stream_gives_every_row_once_an_epoch_in_length_grouped_batches(registry, tokenizer):
    rows = (DATA / "quotes.jsonl").read_text().splitlines()
    feed = _feed(registry, tokenizer)
    epoch = [e for e in feed.examples(0)]
    assert len(epoch) == len(rows)
    per_epoch = -(-len(rows) // 2)
    batches = [feed.batch(i) for i in range(per_epoch)]
    assert sorted(tuple(e.input_ids) for b in batches for e in b) == sorted(
        tuple(e.input_ids) for e in epoch
    )
    # the window is the whole (small) source: batches pair rows of neighbouring lengths
    widths = sorted(len(e.input_ids) for e in epoch)
    for batch in batches:
        lengths = sorted(len(e.input_ids) for e in batch)
        if len(lengths) == 2:
            i = widths.index(lengths[0])
            assert lengths[1] in widths[i : i + 3]
    second = [feed.batch(per_epoch + i) for i in range(per_epoch)]
    assert [[e.input_ids for e in b] for b in second] != [[e.input_ids for e in b] for b in batches]


def test_an_earlier_batch_is_read_again_the_same(registry, tokenizer):
    feed = _feed(registry, tokenizer)
    first = [feed.batch(i) for i in range(5)]
    again = _feed(registry, tokenizer)
    assert again.batch(3) == first[3]  # a resumed run skips to where it was
    assert again.batch(0) == first[0]  # and asking for an earlier one starts over


def test_a_bad_row_in_a_stream_is_named_or_skipped(tmp_path, registry, tokenizer):
    rows = [json.loads(line) for line in (DATA / "quotes.jsonl").read_text().splitlines()]
    rows[3]["tags"] = None
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"row 4 of {path}"):
        list(_feed(registry, tokenizer, path).examples(0))
    skipping = _feed(registry, tokenizer, path, on_bad_row="skip")
    assert len(list(skipping.examples(0))) == len(rows) - 1
    assert skipping.bad_rows == 1


def test_training_on_a_stream(tmp_path, tiny_bloom_dir, plugins):
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=8)
    done = train(load_recipe(path, STREAM))
    manifest = json.loads((done.output_dir / "adaptool.json").read_text())
    assert manifest["data"]["streaming"] is True and manifest["data"]["rows"] is None
    assert manifest["samples"]
    losses = [r["loss"] for r in records(done.output_dir) if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert all("epoch" not in r for r in records(done.output_dir))


def test_a_resumed_stream_ends_where_an_uninterrupted_one_does(tmp_path, tiny_bloom_dir, plugins):
    """Interrupted (Ctrl-C) after step 5 and resumed: the stream is read again and the batches
    already trained skipped, so the final adapter is the uninterrupted run's."""
    from safetensors.torch import load_file

    (tmp_path / "a").mkdir()
    whole = train(load_recipe(recipe_file(tmp_path / "a", tiny_bloom_dir, steps=8), STREAM))
    path = recipe_file(tmp_path / "a", tiny_bloom_dir, steps=8, name="b.toml")
    recipe = load_recipe(path, [*STREAM, "output.dir=" + str(tmp_path / "b")])
    first = train(recipe, reporter=InterruptAt(5))
    assert first.interrupted and first.step == 5
    resumed = train(recipe, resume=True)
    assert resumed.step == 8
    a = load_file(whole.output_dir / "adapter_model.safetensors")
    b = load_file(resumed.output_dir / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (["data.streaming=true"], "data.eval_fraction"),
        (["data.streaming=true", "data.eval_fraction=0.0", "training.max_steps=null"], "max_steps"),
    ],
)
def test_what_a_stream_cannot_have_is_refused(
    tmp_path, tiny_bloom_dir, plugins, overrides, problem
):
    path = recipe_file(tmp_path, tiny_bloom_dir)
    with pytest.raises(RecipeError, match=problem):
        load_recipe(path, overrides)


def test_check_reports_a_stream_from_its_first_window(tmp_path, tiny_bloom_dir, plugins):
    from adaptool.check import check

    report = check(load_recipe(recipe_file(tmp_path, tiny_bloom_dir), STREAM))
    assert any("data.streaming" in w for w in report.warnings)
    assert report.examples and sum(report.token_counts) > 0
    assert report.rows == len(report.token_counts)  # counted in examples of the window
    assert report.without_eos == 0  # every example ends with its trained EOS


def test_a_skipped_bad_row_counts_once_however_many_epochs_read_it(tmp_path, registry, tokenizer):
    rows = [json.loads(line) for line in (DATA / "quotes.jsonl").read_text().splitlines()]
    rows[2]["tags"] = None
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    feed = _feed(registry, tokenizer, path, on_bad_row="skip")
    per_epoch = -(-(len(rows) - 1) // 2)
    for i in range(3 * per_epoch):
        feed.batch(i)
    assert feed.bad_rows == 1
