"""Streamed training data (``data.streaming = true``): a source read as training consumes it,
for sources larger than memory or disk. Rows are shuffled in a bounded buffer, formatted and
tokenized a thousand at a time, and length-grouped within a bounded window; when the source
runs out the next epoch reads it again, shuffled anew. Nothing about the whole source is held:
memory is the buffer and the window."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adaptool.encoding import Encoded, raise_unless_skipped
from adaptool.errors import DataError
from adaptool.tokenized import MAP_BATCH, encode_batch, refusal
from adaptool.training.batching import GROUP_WINDOW

if TYPE_CHECKING:
    import datasets

    from adaptool.base import Formatter
    from adaptool.recipe.schema import DataSection

#: rows shuffled together as they stream in (datasets' shuffle buffer)
SHUFFLE_BUFFER = 10_000
#: the column that keeps each row's place in the source through the shuffle
POSITION = "__adaptool_row"


@dataclass
class StreamFeed:
    """The micro-batches of a streamed source, in order: ``batch(i)`` is the i-th of the
    endless sequence epoch 0, epoch 1, ... . Asked for in order it reads on; asked for an
    earlier one (a resumed run) it reads the stream again from the start and skips, so a
    resumed run sees exactly the batches an uninterrupted one would."""

    source: DataSection
    formatter: Formatter
    tokenizer: Any
    batch_size: int
    seed: int
    group_by_length: bool = True
    commit: str | None = None
    #: the rows refused by the formatter and skipped so far (``data.on_bad_row = "skip"``),
    #: each counted once however many epochs read it
    refused: set[int] = field(default_factory=set)
    _next: int = field(default=0, repr=False)
    _batches: Iterator[list[Encoded]] | None = field(default=None, repr=False)

    def batch(self, index: int) -> list[Encoded]:
        if self._batches is None or index < self._next:
            self._batches, self._next = self._all_batches(), 0
        for _ in range(index - self._next):
            next(self._batches)
        self._next = index + 1
        return next(self._batches)

    @property
    def bad_rows(self) -> int:
        return len(self.refused)

    def epoch(self, index: int) -> float | None:
        """Unknown: a stream has no length until it has been read."""
        return None

    def first(self, count: int) -> list[list[Encoded]]:
        """The first ``count`` micro-batches (the stream then starts again)."""
        batches = list(itertools.islice(self._all_batches(), count))
        self._batches = None
        return batches

    def rows(self, epoch: int) -> datasets.IterableDataset:
        """The source's rows for ``epoch``, each with its place in the source, shuffled."""
        from adaptool.data import load_rows

        rows = load_rows(self.source, commit=self.commit, streaming=True)
        rows = rows.map(lambda _, i: {POSITION: i}, with_indices=True)
        rows = rows.shuffle(seed=self.seed, buffer_size=SHUFFLE_BUFFER)
        rows.set_epoch(epoch)
        return rows

    def examples(self, epoch: int) -> Iterator[Encoded]:
        """The epoch's examples, formatted and tokenized a batch of rows at a time."""
        data, formatter = self.source, self.formatter
        for batch in self.rows(epoch).iter(batch_size=MAP_BATCH):
            positions = batch.pop(POSITION)
            columns = encode_batch(
                batch,
                list(range(len(positions))),
                formatter=formatter,
                tokenizer=self.tokenizer,
                data=data,
                positions=positions,
            )
            for i, ids in enumerate(columns["input_ids"]):
                if columns["bad_row"][i]:
                    bad = refusal(
                        columns["bad_row"][i], columns["bad_message"][i], columns["bad_kind"][i]
                    )
                    raise_unless_skipped([bad], formatter, data)
                    self.refused.add(bad.row)
                    continue
                if columns["trained"][i]:
                    yield Encoded(
                        ids,
                        columns["labels"][i],
                        columns["prompt_tokens"][i],
                        columns["completion_tokens"][i],
                        columns["truncated"][i],
                    )

    def _all_batches(self) -> Iterator[list[Encoded]]:
        import torch

        window = self.batch_size * GROUP_WINDOW
        for epoch in itertools.count():
            examples = self.examples(epoch)
            read = False
            for number in itertools.count():
                chunk = list(itertools.islice(examples, window))
                if not chunk:
                    break
                read = True
                if self.group_by_length:
                    chunk.sort(key=lambda e: -len(e.input_ids))
                batches = [
                    chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
                ]
                if self.group_by_length:  # the window's batches, in a seeded order
                    generator = torch.Generator().manual_seed(
                        self.seed * 1_000_003 + epoch * 7_919 + number
                    )
                    order = torch.randperm(len(batches), generator=generator).tolist()
                    batches = [batches[i] for i in order]
                yield from batches
            if not read:
                raise DataError(
                    f"the streamed source {self.source.source} gave no example with a token "
                    f"to train on (formatter '{self.formatter.name}', max_length = "
                    f"{self.source.max_length})."
                )
