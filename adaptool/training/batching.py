"""Batches for training: length-grouped so compute goes to real tokens, deterministic from
(seed, epoch) so a resumed run sees exactly the batches an uninterrupted one would."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adaptool.encoding import IGNORE_INDEX, Encoded

#: rows are sorted by length within windows of this many batches, then the batches shuffled
GROUP_WINDOW = 64


@dataclass(frozen=True)
class BatchPlan:
    """The order of rows in every epoch: ``batches(epoch)`` lists row indices per batch."""

    lengths: Sequence[int]
    batch_size: int
    seed: int
    group_by_length: bool = True

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """Every batch of ``epoch``, as lists of row indices."""
        order = self._order(epoch)
        return [order.rows[order.starts[b] : order.ends[b]].tolist() for b in order.batch]

    def batch_at(self, index: int) -> list[int]:
        """The ``index``-th batch of the endless stream epoch 0, epoch 1, ..."""
        epoch, position = divmod(index, self.batches_per_epoch)
        order = self._cached(epoch)
        b = order.batch[position]
        return order.rows[order.starts[b] : order.ends[b]].tolist()

    def _order(self, epoch: int) -> _Order:
        """The epoch's rows as one array cut into batches: a seeded permutation, sorted by
        length (longest first, stably) within windows of ``GROUP_WINDOW`` batches, the batches
        then shuffled. Arrays, not a list per batch: a million rows cost 16 MB, not 100."""
        import numpy as np
        import torch

        n = len(self.lengths)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        rows = torch.randperm(n, generator=generator).numpy()
        size = self.batch_size
        if not self.group_by_length:
            starts = np.arange(0, n, size)
            return _Order(rows, starts, np.minimum(starts + size, n), np.arange(len(starts)))
        lengths = np.asarray(self.lengths)
        window = size * GROUP_WINDOW
        starts_list = []
        for start in range(0, n, window):
            chunk = rows[start : start + window]
            rows[start : start + window] = chunk[np.argsort(-lengths[chunk], kind="stable")]
            starts_list.append(np.arange(start, min(start + window, n), size))
        starts = np.concatenate(starts_list) if starts_list else np.zeros(0, np.int64)
        ends = np.minimum(starts + size, [min(s // window * window + window, n) for s in starts])
        shuffle = torch.randperm(len(starts), generator=generator).numpy()
        return _Order(rows, starts, ends, shuffle)

    def _cached(self, epoch: int) -> _Order:
        cache = self.__dict__.setdefault("_cache", {})
        if epoch not in cache:
            cache.clear()
            cache[epoch] = self._order(epoch)
        return cache[epoch]


@dataclass(frozen=True)
class _Order:
    """An epoch's rows in one array; batch ``b`` is ``rows[starts[b]:ends[b]]``, and the
    epoch visits the batches in the order ``batch``."""

    rows: Any
    starts: Any
    ends: Any
    batch: Any


def collate(examples: Sequence[Encoded], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a batch to its longest row: input_ids, attention_mask, labels (IGNORE_INDEX on
    padding). Not to a multiple of 8 or 16: length-grouped rows differ by a token or two, and
    rounding the width up was 12-23 % of the compute on short rows (the quotes average 27
    tokens). The CPU's per-shape kernel caches, which a shape per length would fill, are
    bounded instead (:func:`adaptool.training.speed.limit_kernel_caches`)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_packed(examples: Sequence[Encoded], pad_token_id: int) -> dict[str, Any]:
    """A micro-batch packed into one sequence with no padding between its rows: each row's
    position ids start again at 0, which is how transformers (``create_causal_mask``) knows
    where a row ends and masks attention block-diagonally, so no token sees another row's.
    Every row's first label is IGNORE_INDEX already (nothing in the row precedes it), so no
    row is trained to predict the next one's start."""
    import torch

    ids = [t for e in examples for t in e.input_ids]
    labels = [t for e in examples for t in e.labels]
    positions = [p for e in examples for p in range(len(e.input_ids))]
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
    }


@dataclass
class PlannedFeed:
    """The micro-batches of a tokenized (in-table) training set, in the plan's order."""

    plan: BatchPlan
    examples: Any  # an EncodedSet

    def batch(self, index: int) -> list[Encoded]:
        """The ``index``-th micro-batch of the endless stream epoch 0, epoch 1, ..."""
        return self.examples.take(self.plan.batch_at(index))

    def epoch(self, index: int) -> float | None:
        """Epochs done once micro-batch ``index`` is reached."""
        return index / self.plan.batches_per_epoch


def collate_for(packing: bool | str) -> Callable[[Sequence[Encoded], int], dict[str, Any]]:
    """How the loop makes a micro-batch: padded (``False``), always packed (``True``), or —
    ``"auto"`` — packed when that costs no more attention than padding: a packed sequence of
    T tokens attends over T² positions, a padded batch of B rows of width L over B·L², so a
    batch is packed when T² ≤ B·L² (rows of mixed lengths), padded when its rows are alike
    (as length grouping makes them). Both are exact, so the choice changes speed only."""
    if packing is False:
        return collate
    if packing is True:
        return collate_packed

    def either(examples: Sequence[Encoded], pad_token_id: int) -> dict[str, Any]:
        lengths = [len(e.input_ids) for e in examples]
        total, width = sum(lengths), max(lengths)
        if total * total <= len(lengths) * width * width:
            return collate_packed(examples, pad_token_id)
        return collate(examples, pad_token_id)

    return either


def micro_batches(
    rows: Sequence[Encoded], budget: int, *, packed: bool = False
) -> list[list[Encoded]]:
    """An optimizer step's rows as micro-batches of at most ``budget`` tokens each — as
    padded (rows x the longest), or as packed (their sum) — longest rows first, so each
    micro-batch holds rows alike; a row over the budget goes alone. The loss is the mean over
    the step's trained tokens whatever the split, so how the rows are cut changes the speed
    and the memory, not the step."""
    order = sorted(rows, key=lambda e: len(e.input_ids), reverse=True)  # stable: deterministic
    out: list[list[Encoded]] = []
    current: list[Encoded] = []
    width = used = 0
    for e in order:
        n = len(e.input_ids)
        cost = used + n if packed else (len(current) + 1) * max(width, n)
        if current and cost > budget:
            out.append(current)
            current, width, used = [], 0, 0
        current.append(e)
        width, used = max(width, n), used + n
    if current:
        out.append(current)
    return out


def step_share(
    batch: Sequence[Encoded], world: Any, *, rows: int, budget: int, packed: bool = False
) -> tuple[list[list[Encoded]], int]:
    """This process's micro-batches of an optimizer step's rows ``batch``, and how many of
    them count. Its share is every ``world.size``-th row (the rows come longest first, so the
    shares are alike), cut to the token ``budget`` (:func:`micro_batches`), or — budget 0 —
    into micro-batches of ``rows`` rows. Every process runs as many micro-batches as the
    busiest one (each forward may be a collective, and DDP waits for every process's
    backward): the ones past its own are spares, the step's shortest row run for nothing."""

    def cut(share: Sequence[Encoded]) -> list[list[Encoded]]:
        if budget:
            return micro_batches(share, budget, packed=packed) if share else []
        return [list(share[i : i + rows]) for i in range(0, len(share), rows)]

    mine = cut(batch[world.rank :: world.size])
    busiest = max(len(cut(batch[r :: world.size])) for r in range(world.size))
    return mine + [list(batch[-1:])] * (busiest - len(mine)), len(mine)
