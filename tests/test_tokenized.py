"""tokenize: a batched, cached datasets.map — the same examples as encoding row by row, a
second run that formats nothing, a new fingerprint when anything it depends on changes,
several processes giving the same table, refused rows named or skipped; EncodedSet reads
examples back from the (memory-mapped) table."""

from __future__ import annotations

import json

import pytest

from adaptool.data import load_file
from adaptool.encoding import encode_rows
from adaptool.errors import DataError
from adaptool.recipe.schema import DataSection
from adaptool.tokenized import EncodedSet, tokenize
from tests.helpers import make


def _source(tmp_path, n=60, bad=()):
    path = tmp_path / "quotes.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            tags = None if i in bad else ["life", f"tag{i % 7}"]
            f.write(
                json.dumps({"quote": f"Quote number {i}: " + "so it goes " * (i % 3), "tags": tags})
                + "\n"
            )
    return path


def _data(path, **kw):
    return DataSection(**{"source": str(path), "formatter": "quote-tags", "max_length": 48} | kw)


@pytest.fixture
def counting(registry, monkeypatch):
    """The quote-tags formatter, counting the rows it formats (one process)."""
    formatter = make(registry, "formatter", "quote-tags")
    calls = []
    original = type(formatter).format

    def format(self, row, tokenizer):
        calls.append(row)
        return original(self, row, tokenizer)

    monkeypatch.setattr(type(formatter), "format", format)
    return formatter, calls


def test_the_table_holds_what_encoding_row_by_row_gives(tmp_path, tokenizer, counting):
    formatter, _ = counting
    path = _source(tmp_path)
    data = _data(path, max_length=36)  # the longest rows are cut
    rows = load_file(path)
    done = tokenize(rows, formatter, tokenizer, data)
    expected, _ = encode_rows(list(rows), formatter, tokenizer, data)
    assert list(done.examples) == [e for e in expected if e.trained_tokens]
    assert done.examples.lengths.tolist() == [len(e.input_ids) for e in done.examples]
    assert done.examples.tokens == sum(len(e.input_ids) for e in expected)
    assert done.examples.truncated.sum() == sum(e.truncated for e in expected) > 0


def test_a_second_run_reads_the_cache_and_formats_nothing(tmp_path, tokenizer, counting):
    formatter, calls = counting
    path = _source(tmp_path)
    data = _data(path)
    first = tokenize(load_file(path), formatter, tokenizer, data)
    assert not first.cached and len(calls) == 60
    again = tokenize(load_file(path), formatter, tokenizer, data)
    assert again.cached and len(calls) == 60  # not one row formatted or tokenized again
    assert list(again.examples) == list(first.examples)
    assert again.examples.table.cache_files  # read back from disk, memory-mapped


def test_anything_the_examples_depend_on_makes_a_new_table(tmp_path, tokenizer, counting, registry):
    formatter, calls = counting
    path = _source(tmp_path)
    tokenize(load_file(path), formatter, tokenizer, _data(path))
    changed = [
        (formatter, _data(path, max_length=40)),
        (formatter, _data(path, train_on_prompt=True)),
        (make(registry, "formatter", "quote-tags", separator=" => "), _data(path)),
    ]
    for other, data in changed:
        before = len(calls)
        assert not tokenize(load_file(path), other, tokenizer, data).cached
        assert len(calls) == before + 60
    path.write_text(path.read_text() + json.dumps({"quote": "New", "tags": ["x"]}) + "\n")
    assert not tokenize(load_file(path), formatter, tokenizer, _data(path)).cached


def test_a_changed_tokenizer_makes_a_new_table(tmp_path, tokenizer, registry):
    from transformers import AutoTokenizer

    from adaptool.testing import make_tokenizer
    from tests.helpers import corpus

    formatter = make(registry, "formatter", "quote-tags")
    path = _source(tmp_path)
    tokenize(load_file(path), formatter, tokenizer, _data(path))
    make_tokenizer(tmp_path / "other", corpus(), vocab_size=300)
    other = AutoTokenizer.from_pretrained(str(tmp_path / "other"))
    assert not tokenize(load_file(path), formatter, other, _data(path)).cached


def test_two_processes_give_the_same_table(tmp_path, tokenizer, registry):
    formatter = make(registry, "formatter", "quote-tags")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    path, copy = _source(tmp_path / "a", n=2500), _source(tmp_path / "b", n=2500)
    one = tokenize(load_file(path), formatter, tokenizer, _data(path), processes=1)
    two = tokenize(load_file(copy), formatter, tokenizer, _data(path), processes=2)
    assert len(two.examples.table.cache_files) == 2  # one file per process
    assert len(one.examples.table.cache_files) == 1
    assert len(two.examples) == len(one.examples) == 2500
    assert list(two.examples) == list(one.examples)
    again = tokenize(load_file(copy), formatter, tokenizer, _data(path), processes=2)
    assert again.cached


def test_a_bad_row_is_named_or_skipped(tmp_path, tokenizer, registry):
    formatter = make(registry, "formatter", "quote-tags")
    path = _source(tmp_path, bad=(4, 17))
    rows = load_file(path)
    with pytest.raises(DataError, match=rf"row 5 of {path}"):
        tokenize(rows, formatter, tokenizer, _data(path))
    skipped = tokenize(rows, formatter, tokenizer, _data(path, on_bad_row="skip"))
    assert [b.row for b in skipped.bad] == [5, 18]
    assert len(skipped.examples) == 58


def test_positions_name_the_row_in_the_source(tmp_path, tokenizer, registry):
    formatter = make(registry, "formatter", "quote-tags")
    path = _source(tmp_path, bad=(9,))
    rows = load_file(path).select([9, 3])
    with pytest.raises(DataError, match=r"row 10 of"):
        tokenize(rows, formatter, tokenizer, _data(path), positions=[9, 3])


def test_an_encoded_set_reads_examples_by_index_and_slice():
    from adaptool.encoding import Encoded

    examples = [Encoded([i, i + 1, 2], [-100, i + 1, 2], 1, 2, False) for i in range(5)]
    kept = EncodedSet.of(examples)
    assert len(kept) == 5 and kept[3] == examples[3] and kept[-1] == examples[4]
    assert kept[1:3] == examples[1:3] and kept.take([4, 0]) == [examples[4], examples[0]]
    assert kept.trained.tolist() == [2] * 5 and kept.tokens == 15
    with pytest.raises(IndexError):
        kept[5]
    assert kept.select([2]).take([0]) == [examples[2]]


def test_the_content_hash_sees_tokens_labels_and_order_only():
    from adaptool.encoding import Encoded

    examples = [Encoded([i, i + 1, 2], [-100, i + 1, 2], 1, 2, False) for i in range(5)]
    same = EncodedSet.of(examples).content_hash()
    assert EncodedSet.of(list(examples)).content_hash() == same
    assert EncodedSet.of(examples[::-1]).content_hash() != same
    relabelled = [*examples[:4], Encoded([4, 5, 2], [-100, -100, 2], 1, 2, False)]
    assert EncodedSet.of(relabelled).content_hash() != same
    assert EncodedSet.of(examples).select([0, 1]).content_hash() == (
        EncodedSet.of(examples[:2]).content_hash()
    )


def test_an_edited_chat_template_file_makes_a_new_table(tmp_path, tokenizer, registry):
    """The option names a file: its content, not only its path, keys the cache."""
    from adaptool.chat_templates import BUILTIN

    template = tmp_path / "mine.jinja"
    template.write_text(BUILTIN["zephyr"])
    path = tmp_path / "chats.jsonl"
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    path.write_text((json.dumps({"messages": conversation}) + "\n") * 4)
    data = DataSection(source=str(path), formatter="chat", max_length=64)
    formatter = make(registry, "formatter", "chat", chat_template=str(template))
    first = tokenize(load_file(path), formatter, tokenizer, data)
    assert tokenize(load_file(path), formatter, tokenizer, data).cached
    template.write_text(BUILTIN["chatml"])
    again = tokenize(load_file(path), formatter, tokenizer, data)
    assert not again.cached and list(again.examples) != list(first.examples)


def test_the_tokenizer_key_does_not_change_when_the_tokenizer_is_called(tokenizer):
    from adaptool.tokenized import _tokenizer_hash

    before = _tokenizer_hash(tokenizer)
    tokenizer(["some text"], truncation=True, max_length=4, padding="max_length")
    tokenizer(["some text"])
    assert _tokenizer_hash(tokenizer) == before


def test_an_empty_split_gives_an_empty_set(tokenizer, registry):
    import datasets

    formatter = make(registry, "formatter", "quote-tags")
    rows = datasets.Dataset.from_list([{"quote": "q", "tags": ["t"]}]).select([])
    done = tokenize(rows, formatter, tokenizer, _data("x.jsonl"))
    assert len(done.examples) == 0 and done.bad == []
