"""A recipe's data for training: each source loaded, checked, split and tokenized (cached,
see :mod:`adaptool.tokenized`), then the sources' training sets concatenated or mixed by
weight into one set of examples, without a Python list per row."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adaptool.data import check_columns, dataset_commit, load_rows, split_rows
from adaptool.encoding import ROW_ERRORS, BadRow
from adaptool.errors import DataError
from adaptool.tokenized import EncodedSet, tokenize
from adaptool.training.batching import GROUP_WINDOW
from adaptool.training.stream import SHUFFLE_BUFFER, StreamFeed

if TYPE_CHECKING:
    from collections.abc import Sequence

    import datasets
    import numpy as np

    from adaptool.recipe.schema import DataSection, Recipe
    from adaptool.training.progress import Reporter

#: training examples recorded (formatted) in the manifest for later commands
SAMPLES = 4
#: rows of a streamed source read ahead, to check its columns and take samples from
SAMPLE_ROWS = 64


@dataclass
class Data:
    """The recipe's rows, split and encoded."""

    rows: datasets.Dataset
    train_set: EncodedSet
    eval_set: EncodedSet
    #: the held-out rows as loaded (None without an eval split)
    eval_rows: datasets.Dataset | None
    truncated: int
    dropped: int
    #: the first rows as the formatter renders them: {"prompt", "completion"}
    samples: list[dict[str, str]]
    #: rows refused by the formatter and skipped (``data.on_bad_row = "skip"``)
    bad_rows: list[BadRow]
    #: the commit of a Hub dataset the rows were loaded at (None for a local file)
    commit: str | None = None
    #: what each source gave (the manifest's ``data.sources``)
    sources: list[dict[str, Any]] = field(default_factory=list)
    #: rows in the training and held-out splits (before formatting: a chunking formatter's
    #: blocks and the refused rows make the sets' own sizes differ)
    split_rows: tuple[int, int] = (0, 0)
    #: a streamed source's batches (``train_set`` then holds only its first window's)
    stream: StreamFeed | None = None

    def key(self) -> dict[str, Any]:
        """What a resumed run must find again to see the same batches: each source (and the
        commit it was read at) and a hash of the training examples' tokens and labels, in
        order, which changes with the rows, the formatter, the tokenizer or the [data]
        settings (computed once)."""
        if "_key" not in self.__dict__:
            self.__dict__["_key"] = {
                "sources": [[r["source"], r["commit"]] for r in self.sources],
                "examples": None if self.stream else self.train_set.content_hash(),
            }
        return self.__dict__["_key"]


def load_data(
    recipe: Recipe, formatters: Sequence[Any], tokenizer: Any, reporter: Reporter
) -> Data:
    """Load, check, split and encode the recipe's data, each source with its formatter, and
    mix the sources' training sets as the recipe says (DataError on bad data). The first
    source's rows are the ones later commands see (samples, held-out rows)."""
    sources, seed = recipe.data.all_sources, recipe.training.seed
    if sources[0].streaming:  # the only source (the recipe is checked for it)
        return load_stream(recipe, formatters[0], tokenizer, reporter)
    parts = [
        load_source(source, formatter, tokenizer, seed, reporter)
        for source, formatter in zip(sources, formatters, strict=True)
    ]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    train_sets = [part.train_set for part in parts]
    if recipe.data.mix == "weights":
        owner, index = mix_by_weights(
            [len(s) for s in train_sets], [s.weight or 0.0 for s in sources], seed
        )
    else:
        owner, index = _concatenation([len(s) for s in train_sets])
    train_set = combine(train_sets, owner, index)
    records = [part.sources[0] for part in parts]
    for i, record in enumerate(records):
        record["mixed_examples"] = int((owner == i).sum())
    reporter.info(
        f"mixture ({recipe.data.mix}): "
        + "; ".join(
            f"{r['source']}: {r['mixed_examples']} of {len(train_set)} training examples"
            for r in records
        )
    )
    eval_sets = [part.eval_set for part in parts]
    owner, index = _concatenation([len(s) for s in eval_sets])
    return Data(
        first.rows,
        train_set,
        combine(eval_sets, owner, index),
        first.eval_rows,
        sum(part.truncated for part in parts),
        sum(part.dropped for part in parts),
        first.samples,
        [b for part in parts for b in part.bad_rows],
        first.commit,
        records,
        tuple(sum(part.split_rows[i] for part in parts) for i in (0, 1)),
    )


def mix_by_weights(
    sizes: Sequence[int], weights: Sequence[float], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """As many examples as the sources have together, each drawn from a source chosen with
    probability proportional to its weight (seeded), the source's examples taken in a shuffled
    order and reused once it runs out (a small source with a large weight repeats). Returns
    the source of each drawn example and its index in that source."""
    import numpy as np

    rng = np.random.default_rng(seed)
    usable = np.asarray([w if n else 0.0 for n, w in zip(sizes, weights, strict=True)])
    owner = rng.choice(len(sizes), size=sum(sizes), p=usable / usable.sum())
    index = np.zeros(len(owner), dtype=np.int64)
    for i, n in enumerate(sizes):
        picked = np.nonzero(owner == i)[0]
        if len(picked):
            order = rng.permutation(n)
            index[picked] = order[np.arange(len(picked)) % n]
    return owner, index


def _concatenation(sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    owner = np.repeat(np.arange(len(sizes)), sizes)
    index = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, np.int64)
    return owner, index.astype(np.int64)


def combine(sets: Sequence[EncodedSet], owner: np.ndarray, index: np.ndarray) -> EncodedSet:
    """One set: example k is ``sets[owner[k]][index[k]]`` (the tables joined, then an index
    mapping over them: no example is copied)."""
    import datasets
    import numpy as np

    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])[:-1]]).astype(np.int64)
    joined = datasets.concatenate_datasets([s.table for s in sets])
    return EncodedSet(joined.select(offsets[owner] + index))


def _source_record(
    source: DataSection,
    formatter: Any,
    commit: str | None,
    rows: Any,
    train: EncodedSet,
    held: EncodedSet,
) -> dict[str, Any]:
    """What the manifest records of one source."""
    return {
        "source": source.source,
        "split": source.split,
        "config": source.config,
        "revision": source.revision,
        "commit": commit,
        "formatter": formatter.name,
        "options": dict(source.options),
        "weight": source.weight,
        "rows": len(rows),
        "train_examples": len(train),
        "eval_examples": len(held),
        "tokens": train.tokens,
        "trained_tokens": train.trained_tokens,
    }


def load_source(
    source: DataSection,
    formatter: Any,
    tokenizer: Any,
    seed: int,
    reporter: Reporter | None,
    *,
    require_trained: bool = True,
) -> Data:
    """Load, check, split and encode one source (DataError on bad data; with
    ``require_trained``, also when no example has a token to train on). ``check`` and
    ``train`` both come here, so what check tokenized, train finds in the cache."""
    commit = dataset_commit(source)  # resolved once: the rows loaded are the ones pinned
    rows = load_rows(source, commit=commit)
    check_columns(rows, formatter, source.source)
    split = split_rows(rows, source.eval_fraction, seed)
    train = tokenize(split.train, formatter, tokenizer, source, positions=split.train_positions)
    train_set, bad = train.examples, list(train.bad)
    eval_set, dropped = EncodedSet.of([]), train.dropped
    eval_rows = split.eval
    if eval_rows is not None:
        held = tokenize(eval_rows, formatter, tokenizer, source, positions=split.eval_positions)
        eval_set, dropped = held.examples, dropped + held.dropped
        bad += held.bad
        if held.bad:  # the held-out rows eval will score: the ones the formatter takes
            refused = {b.row - 1 for b in held.bad}
            keep = [i for i, pos in enumerate(split.eval_positions) if pos not in refused]
            eval_rows = eval_rows.select(keep)
    if not len(train_set) and require_trained and len(train.bad) == len(split.train):
        first = train.bad[0]
        raise DataError(
            f"all {len(split.train)} training rows of {source.source} are refused by "
            f"formatter '{formatter.name}' (skipped, as data.on_bad_row = \"skip\" says); the "
            f"first, row {first.row}: {first.message}"
        )
    if not len(train_set) and require_trained:
        raise DataError(
            f"none of the {len(split.train)} training rows of {source.source} leaves a "
            f"completion token to train on (formatter '{formatter.name}', max_length = "
            f"{source.max_length}): `adaptool check` shows the examples."
        )
    truncated = int(train_set.truncated.sum())
    if formatter.chunks:
        tokens = train_set.tokens + eval_set.tokens
        shape = (
            f"{len(train_set)} train and {len(eval_set)} eval blocks of up to "
            f"{source.max_length} tokens ({tokens:,} tokens, none truncated)"
        )
    else:
        shape = (
            f"{len(train_set)} train, {len(eval_set)} eval; {truncated} truncated to "
            f"max_length = {source.max_length}"
        )
    if reporter is not None:
        reporter.info(
            f"data: {len(rows)} rows from {source.source} -> {shape}"
            + (f"; {dropped} skipped (nothing left to train on)" if dropped else "")
            + (f"; {len(bad)} bad rows skipped (first: row {bad[0].row})" if bad else "")
            + ("; tokenized earlier (cache)" if train.cached else "")
        )
    return Data(
        rows,
        train_set,
        eval_set,
        eval_rows,
        truncated,
        dropped,
        _samples(rows, formatter, tokenizer),
        bad,
        commit,
        [_source_record(source, formatter, commit, rows, train_set, eval_set)],
        (len(split.train), len(split.eval) if split.eval is not None else 0),
    )


def load_stream(recipe: Recipe, formatter: Any, tokenizer: Any, reporter: Reporter | None) -> Data:
    """A streamed source: its first batches read now (the columns checked, the samples and
    the shapes for the memory estimate taken from them), the rest as training consumes it."""
    source, t = recipe.data.all_sources[0], recipe.training
    commit = dataset_commit(source)
    stream = StreamFeed(
        source, formatter, tokenizer, t.batch_size, t.seed, t.group_by_length, commit
    )
    head = list(itertools.islice(load_rows(source, commit=commit, streaming=True), SAMPLE_ROWS))
    if not head:
        raise DataError(f"the dataset {source.source} has no rows (formatter '{formatter.name}').")
    missing = [c for c in formatter.columns() if c not in head[0]]
    if missing:
        check_columns(datasets_of(head), formatter, source.source)
    first = [e for batch in stream.first(GROUP_WINDOW) for e in batch]
    eos = tokenizer.eos_token_id
    if reporter is not None:
        reporter.info(
            f"data: streaming {source.source} (shuffled {SHUFFLE_BUFFER:,} rows at a time, "
            f"tokenized as training reads it; nothing cached)"
        )
    record = _source_record(source, formatter, commit, [], EncodedSet.of([]), EncodedSet.of([]))
    record.update(rows=None, train_examples=None, tokens=None, trained_tokens=None)
    return Data(
        rows=datasets_of(head),
        train_set=EncodedSet.of(first, eos),
        eval_set=EncodedSet.of([]),
        eval_rows=None,
        truncated=0,
        dropped=0,
        samples=_samples(head, formatter, tokenizer),
        bad_rows=[],
        commit=commit,
        sources=[record | {"streaming": True}],
        stream=stream,
    )


def datasets_of(rows: list[dict[str, Any]]) -> datasets.Dataset:
    import datasets

    return datasets.Dataset.from_list(rows)


def _samples(rows: Any, formatter: Any, tokenizer: Any) -> list[dict[str, str]]:
    """The first rows that format, as formatted: what later commands run without the data."""
    samples: list[dict[str, str]] = []
    for i in range(min(len(rows), 64)):
        if len(samples) == SAMPLES:
            break
        try:
            example = formatter.format(rows[i], tokenizer)
        except ROW_ERRORS:
            continue  # a bad row, skipped in training as well
        samples.append({"prompt": example.prompt, "completion": example.completion})
    return samples
