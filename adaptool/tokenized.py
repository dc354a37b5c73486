"""Rows to a training set that scales: formatted and tokenized by a batched ``datasets.map``
(several processes where there are enough rows to pay for them), cached on disk under a
fingerprint of everything the result depends on, and read back memory-mapped, so a second run
on the same data, formatter and tokenizer starts at once and a million rows never become a
million Python lists."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from adaptool.encoding import BadRow, Encoded, encode_rows, raise_unless_skipped

if TYPE_CHECKING:
    import datasets
    import numpy as np

    from adaptool.base import Formatter
    from adaptool.recipe.schema import DataSection

#: rows per batch of the map (and the unit a chunking formatter's blocks are cut within)
MAP_BATCH = 1000
#: below this many rows one process does it: starting workers costs more than it saves
PARALLEL_ROWS = 20_000
#: examples hashed at a time by :meth:`EncodedSet.content_hash`
HASH_BLOCK = 100_000
#: bump when what a cached table holds changes
LAYOUT = 2

_COLUMNS = (
    "input_ids",
    "labels",
    "prompt_tokens",
    "completion_tokens",
    "truncated",
    "length",
    "trained",
    "ends_with_eos",
    "bad_row",
    "bad_message",
    "bad_kind",
)


def _features() -> datasets.Features:
    from datasets import Features, List, Value

    return Features(
        {
            "input_ids": List(Value("int32")),
            "labels": List(Value("int32")),
            "prompt_tokens": Value("int32"),
            "completion_tokens": Value("int32"),
            "truncated": Value("bool"),
            "length": Value("int32"),
            "trained": Value("int32"),
            # the last trained token is EOS: the example teaches the model to stop
            "ends_with_eos": Value("bool"),
            # a refused row: its 1-based place in the source, the reason, and 0 bad data /
            # 1 bad data the plugin raised / 2 the plugin's bug (0 length, no tokens)
            "bad_row": Value("int64"),
            "bad_message": Value("string"),
            "bad_kind": Value("int8"),
        }
    )


def column(table: datasets.Dataset, name: str) -> np.ndarray:
    """One scalar column of a table as a numpy array, read through Arrow in one go."""
    arrow = table.with_format("arrow", columns=[name])[:]
    return arrow.column(name).to_numpy(zero_copy_only=False)


class EncodedSet(Sequence[Encoded]):
    """Encoded examples kept as an Arrow table (memory-mapped when it came from the cache):
    the lengths and trained-token counts as arrays, an example built only when asked for."""

    def __init__(self, table: datasets.Dataset) -> None:
        import numpy as np

        self.table = table
        self.lengths: np.ndarray = column(table, "length").astype(np.int64)
        self.trained: np.ndarray = column(table, "trained").astype(np.int64)
        self.truncated: np.ndarray = column(table, "truncated").astype(bool)
        self.ends_with_eos: np.ndarray = column(table, "ends_with_eos").astype(bool)

    def __len__(self) -> int:
        return len(self.lengths)

    @overload
    def __getitem__(self, index: int) -> Encoded: ...
    @overload
    def __getitem__(self, index: slice) -> list[Encoded]: ...
    def __getitem__(self, index: int | slice) -> Encoded | list[Encoded]:
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.take([index])[0]

    def __iter__(self) -> Iterator[Encoded]:
        for start in range(0, len(self), MAP_BATCH):
            yield from self[start : start + MAP_BATCH]

    def take(self, indices: Sequence[int]) -> list[Encoded]:
        """The examples at ``indices``, read in one go."""
        indices = [int(i) for i in indices]
        if not indices:
            return []
        cols = self.table.select_columns(
            ["input_ids", "labels", "prompt_tokens", "completion_tokens", "truncated"]
        )[indices]
        return [
            Encoded(ids, labels, prompt, completion, cut)
            for ids, labels, prompt, completion, cut in zip(
                cols["input_ids"],
                cols["labels"],
                cols["prompt_tokens"],
                cols["completion_tokens"],
                cols["truncated"],
                strict=True,
            )
        ]

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def trained_tokens(self) -> int:
        return int(self.trained.sum())

    def content_hash(self) -> str:
        """A hash of every example's tokens and labels, in order (read through Arrow a block
        at a time: about a second per 10 million tokens here). Unlike the table's
        fingerprint, it ignores a source file's timestamp and sees only what training sees."""
        import xxhash

        digest = xxhash.xxh3_128()
        arrow = self.table.with_format("arrow")
        for start in range(0, len(self), HASH_BLOCK):
            block = arrow[start : start + HASH_BLOCK]
            for name in ("input_ids", "labels"):
                column = block.column(name).combine_chunks()
                digest.update(column.offsets.to_numpy().tobytes())
                digest.update(column.values.to_numpy().tobytes())
        return digest.hexdigest()

    def select(self, indices: Sequence[int] | np.ndarray) -> EncodedSet:
        return EncodedSet(self.table.select(indices))

    @classmethod
    def of(cls, examples: Sequence[Encoded], eos: int | None = None) -> EncodedSet:
        """A set of examples made in memory (tests, a handful of rows); ``eos``: the
        tokenizer's EOS id, for ``ends_with_eos``."""
        import datasets

        table = datasets.Dataset.from_dict(_columns(examples, [], eos), features=_features())
        return cls(table)


@dataclass
class Tokenized:
    """One source's rows encoded: the usable examples, what was left out and why."""

    examples: EncodedSet
    #: rows refused by the formatter (skipped under ``data.on_bad_row = "skip"``)
    bad: list[BadRow]
    #: examples left out because no token of them is trained
    dropped: int
    #: True when the table was read from the cache (nothing formatted or tokenized)
    cached: bool


def _columns(
    encoded: Sequence[Encoded], bad: Sequence[BadRow], eos: int | None = None
) -> dict[str, list]:
    kinds = [2 if b.bug else int(b.by_plugin) for b in bad]  # read back by refusal()
    return {
        "input_ids": [e.input_ids for e in encoded] + [[] for _ in bad],
        "labels": [e.labels for e in encoded] + [[] for _ in bad],
        "prompt_tokens": [e.prompt_tokens for e in encoded] + [0] * len(bad),
        "completion_tokens": [e.completion_tokens for e in encoded] + [0] * len(bad),
        "truncated": [e.truncated for e in encoded] + [False] * len(bad),
        "length": [len(e.input_ids) for e in encoded] + [0] * len(bad),
        "trained": [e.trained_tokens for e in encoded] + [0] * len(bad),
        "ends_with_eos": [e.ends_with_eos(eos) for e in encoded] + [False] * len(bad),
        "bad_row": [0] * len(encoded) + [b.row for b in bad],
        "bad_message": [""] * len(encoded) + [b.message for b in bad],
        "bad_kind": [0] * len(encoded) + kinds,
    }


def refusal(row: int, message: str, kind: int) -> BadRow:
    """A refused row as a table stores it (``bad_kind``: 0 bad data, 1 bad data the plugin
    raised, 2 the plugin's bug) back as a BadRow."""
    return BadRow(row, message, by_plugin=kind >= 1, bug=kind == 2)


def encode_batch(
    batch: dict[str, list],
    indices: list[int],
    *,
    formatter: Formatter,
    tokenizer: Any,
    data: DataSection,
    positions: Sequence[int] | None,
) -> dict[str, list]:
    names = list(batch)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    where = [int(positions[i]) for i in indices] if positions is not None else list(indices)
    encoded, bad = encode_rows(rows, formatter, tokenizer, data, positions=where, collect=True)
    return _columns(encoded, bad, tokenizer.eos_token_id)


def tokenize(
    rows: datasets.Dataset,
    formatter: Formatter,
    tokenizer: Any,
    data: DataSection,
    *,
    positions: Sequence[int] | None = None,
    processes: int | None = None,
) -> Tokenized:
    """Format and encode ``rows`` as the recipe's [data] says (``positions``: each row's
    0-based place in the source, for messages). The table is cached next to the rows' own
    cache files under a fingerprint of the rows, the formatter (name, version, options and
    code), the tokenizer and the [data] settings; a second call finds it and formats nothing.
    A refused row raises as :func:`~adaptool.encoding.encode_rows` does, or is skipped."""
    import numpy as np

    if len(rows) == 0:
        return Tokenized(EncodedSet.of([]), [], 0, False)
    fingerprint = _fingerprint(rows, formatter, tokenizer, data)
    cache = _cache_file(rows, fingerprint)
    procs = processes if processes is not None else _processes(len(rows))
    if formatter.chunks:  # blocks are cut within a map batch: one process cuts them the same
        procs = 1  # whatever the machine (a cache and a resume that do not depend on cores)
    cached = cache is not None and _cached(cache, procs)
    if not cached:  # what reading the rows left in Arrow's allocator goes back to the system
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    with _one_thread_per_worker(procs):
        table = _map(rows, procs, fingerprint, cache, formatter, tokenizer, data, positions)
    bad_rows = column(table, "bad_row")
    refused = np.nonzero(bad_rows > 0)[0]
    bad = []
    if len(refused):
        found = table.select(refused).select_columns(["bad_row", "bad_message", "bad_kind"])
        bad = sorted(
            (
                refusal(row, message, kind)
                for row, message, kind in zip(
                    found["bad_row"], found["bad_message"], found["bad_kind"], strict=True
                )
            ),
            key=lambda b: b.row,
        )
        raise_unless_skipped(bad, formatter, data)
    examples = EncodedSet(table)
    keep = np.nonzero((examples.trained > 0) & (bad_rows == 0))[0]
    usable = examples if len(keep) == len(examples) else examples.select(keep)
    return Tokenized(usable, bad, len(examples) - len(keep) - len(refused), cached)


def _map(
    rows: datasets.Dataset,
    procs: int,
    fingerprint: str,
    cache: Path | None,
    formatter: Formatter,
    tokenizer: Any,
    data: DataSection,
    positions: Sequence[int] | None,
) -> datasets.Dataset:
    return rows.map(
        encode_batch,
        batched=True,
        batch_size=MAP_BATCH,
        with_indices=True,
        remove_columns=rows.column_names,
        features=_features(),
        fn_kwargs={
            "formatter": formatter,
            "tokenizer": tokenizer,
            "data": data,
            "positions": positions,
        },
        num_proc=procs if procs > 1 else None,
        new_fingerprint=fingerprint,
        cache_file_name=str(cache) if cache is not None else None,
        load_from_cache_file=cache is not None,
        desc="tokenizing",
    )


@contextlib.contextmanager
def _one_thread_per_worker(procs: int) -> Iterator[None]:
    """With several worker processes, each tokenizes on one thread (the cores are taken by
    the processes; and the Rust tokenizer would warn about threads used before the fork);
    the parent's objects are frozen out of the garbage collector, so the forked workers'
    collections do not touch — and so copy — every page of the parent's heap (measured:
    +250 MiB of copies for two workers without the freeze, +60 MiB with it)."""
    if procs <= 1:
        yield
        return
    import gc

    own = "TOKENIZERS_PARALLELISM" not in os.environ
    if own:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if own:
            del os.environ["TOKENIZERS_PARALLELISM"]


def _processes(rows: int) -> int:
    """Worker processes for a map over ``rows`` rows: one per core past a size where starting
    them pays, at most 8."""
    if rows < PARALLEL_ROWS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8, rows // (PARALLEL_ROWS // 2)))


def _cache_file(rows: datasets.Dataset, fingerprint: str) -> Path | None:
    """Where the table is cached: beside the rows' own Arrow files (None: rows made in
    memory, which are not cached)."""
    from datasets import is_caching_enabled

    if not rows.cache_files or not is_caching_enabled():
        return None
    return Path(rows.cache_files[0]["filename"]).parent / f"adaptool-tokens-{fingerprint}.arrow"


def _cached(cache: Path, processes: int) -> bool:
    if processes <= 1:
        return cache.is_file()
    return all(
        cache.with_name(f"{cache.stem}_{rank:05d}_of_{processes:05d}{cache.suffix}").is_file()
        for rank in range(processes)
    )


def _fingerprint(rows: datasets.Dataset, formatter: Formatter, tokenizer: Any, data: Any) -> str:
    """A hash of everything the encoded table depends on."""
    import adaptool

    settings = {
        "layout": LAYOUT,
        "adaptool": adaptool.__version__,
        "encoding": _source_hash(_encoding_modules()),
        "rows": rows._fingerprint,
        "formatter": [formatter.name, getattr(formatter, "version", None)],
        "formatter_code": _source_hash([type(formatter)]),
        "options": _plain(getattr(formatter, "options", None)),
        "option_files": _option_files(formatter),
        "transformers": _version("transformers"),
        "tokenizer": _tokenizer_hash(tokenizer),
        "data": {
            key: getattr(data, key)
            for key in ("source", "max_length", "train_on_prompt", "on_bad_row")
        },
    }
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _option_files(formatter: Formatter) -> dict[str, str]:
    """A hash of each file a path-valued option names (an edited chat template re-encodes)."""
    from adaptool.base import recipe_relative

    options = getattr(formatter, "options", None)
    found = {}
    for name in recipe_relative(type(options)):
        value = getattr(options, name, None)
        if isinstance(value, str):
            try:
                path = Path(value)
                if path.is_file():
                    found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
            except (OSError, ValueError):
                continue
    return found


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _encoding_modules() -> list[Any]:
    import adaptool.chat_templates
    import adaptool.encoding

    return [adaptool.encoding, adaptool.chat_templates]


def _source_hash(objects: Sequence[Any]) -> str:
    """A hash of the files the objects' code lives in (a changed formatter re-encodes)."""
    digest = hashlib.sha256()
    for obj in objects:
        for part in inspect.getmro(obj) if inspect.isclass(obj) else [obj]:
            if getattr(part, "__module__", None) == "builtins":
                continue
            try:
                path = inspect.getsourcefile(part)
            except TypeError:
                continue
            if path:
                digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _plain(options: Any) -> Any:
    if options is None:
        return None
    dump = getattr(options, "model_dump", None)
    return dump(mode="json") if dump else options


def _tokenizer_hash(tokenizer: Any) -> str:
    """The tokenizer's whole definition: its fast tokenizer's JSON (vocabulary, merges,
    normalisation), special tokens and chat template — or, for a slow one, its pickle hash."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the truncation and padding a call switches on and off
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None), definition.pop("padding", None)
        digest.update(json.dumps(definition, sort_keys=True).encode())
    else:
        from datasets.fingerprint import Hasher

        digest.update(Hasher.hash(tokenizer).encode())
    extra = {
        "special": getattr(tokenizer, "special_tokens_map", None),
        "eos": tokenizer.eos_token_id,
        "template": getattr(tokenizer, "chat_template", None),
        "bos": getattr(tokenizer, "add_bos_token", None),
        "eos_added": getattr(tokenizer, "add_eos_token", None),
    }
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()
