"""Datasets: load a recipe's source with ``datasets``, check it fits the formatter."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool.errors import DataError, describe
from adaptool.hub.client import bounded_requests

if TYPE_CHECKING:
    from collections.abc import Sequence

    import datasets

    from adaptool.base import Formatter
    from adaptool.recipe.schema import DataSection

BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",  # one row per paragraph (blank-line separated), in a "text" column
}
GLOB_CHARS = frozenset("*?[")


def _quiet_datasets() -> Any:
    import datasets

    bounded_requests()  # a Hub dataset's requests get a time limit
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def load_rows(
    data: DataSection, *, commit: str | None = None, streaming: bool = False
) -> datasets.Dataset:
    """The rows of ``data.source`` (a local .jsonl/.json/.csv/.parquet file or a Hub dataset id,
    with ``data.config``, at ``commit`` — default: what ``data.revision`` resolves to now) for
    ``data.split``; ``streaming``: an IterableDataset read as it is consumed, nothing converted
    or cached first. Raises DataError naming the source when it cannot be read."""
    ds = _quiet_datasets()
    source = data.source
    if data.is_local and GLOB_CHARS & set(source) and not Path(source).exists():
        if data.config is not None or data.revision is not None:
            raise DataError("data.config and data.revision are for Hub datasets, not files.")
        split = data.split if data.split.startswith("train") else "train"
        paths = sorted(Path(p) for p in glob.glob(source))
        return load_files(paths, split=split, pattern=source, streaming=streaming)
    if data.is_local:
        path = Path(source)
        builder = BUILDERS.get(path.suffix.lower())
        if not path.is_file():
            raise DataError(f"data.source: the file {path} does not exist.")
        if builder is None:
            raise DataError(
                f"data.source: {path} is not a file type adaptool reads ({', '.join(BUILDERS)})."
            )
        if path.stat().st_size < 4096 and not path.read_bytes().strip():
            raise DataError(f"the dataset {path} has no rows (the file is empty).")
        if data.config is not None or data.revision is not None:
            raise DataError(
                f"data.config and data.revision choose a Hub dataset's configuration and "
                f"version; {path} is a local file: remove them."
            )
        split = data.split if data.split.startswith("train") else "train"
        return load_files([path], split=split, streaming=streaming)
    what = f"'{source}'" + (f" (config '{data.config}')" if data.config else "")
    try:
        return ds.load_dataset(
            source,
            name=data.config,
            split=data.split,
            revision=commit or dataset_commit(data),
            streaming=streaming,
        )
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"data.source: could not load the Hub dataset {what} (split '{data.split}'"
            f"{f', revision {data.revision}' if data.revision else ''}): {describe(exc)}. "
            f"Without a network, point data.source at a local .jsonl/.json/.csv/.parquet file."
        ) from None


def dataset_commit(data: DataSection) -> str | None:
    """The commit a Hub dataset's ``data.revision`` (default: its main branch) resolves to:
    what is loaded and pinned in the manifest, so a re-run reads the same rows. None for a
    local file."""
    if data.is_local:
        return None
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:  # HF_HUB_OFFLINE=1: datasets reads its cache, nothing to pin
        return None
    try:
        return HfApi().dataset_info(data.source, revision=data.revision).sha
    except Exception as exc:
        raise DataError(
            f"data.source: the Hub dataset '{data.source}'"
            f"{f' at revision {data.revision}' if data.revision else ''} cannot be resolved: "
            f"{describe(exc).rstrip('.')}. Without a network, point data.source at a local "
            f"file (or set HF_HUB_OFFLINE=1 to use a cached copy)."
        ) from None


def load_file(path: Path, *, split: str = "train") -> datasets.Dataset:
    """The rows of a local .jsonl/.json/.csv/.parquet/.txt file."""
    return load_files([path], split=split)


def load_files(
    paths: list[Path], *, split: str = "train", pattern: str | None = None, streaming: bool = False
) -> datasets.Dataset:
    """The rows of local files of one type, in order (the files a glob ``pattern`` matched)."""
    ds = _quiet_datasets()
    if not paths:
        raise DataError(f"data.source: {pattern} matches no file.")
    builders = {BUILDERS.get(p.suffix.lower()) for p in paths}
    if None in builders:
        odd = next(p for p in paths if p.suffix.lower() not in BUILDERS)
        raise DataError(f"{odd} is not a file type adaptool reads ({', '.join(BUILDERS)}).")
    if len(builders) > 1:
        raise DataError(
            f"data.source: {pattern} matches files of several types "
            f"({', '.join(sorted(p.suffix for p in paths))}); one source reads one type."
        )
    builder = builders.pop()
    # the JSON reader takes bytes that are not UTF-8 into its strings unchecked, and they
    # fail later, row by row: text files are checked first (one streamed read)
    for path in paths if builder != "parquet" else []:
        bad = first_non_utf8_byte(path)
        if bad is not None:
            raise DataError(
                f"data.source: {path} is not UTF-8 text: byte {bad[0]} is {bad[1]:#04x} "
                f"(re-save it as UTF-8)."
            )
    extra = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        return ds.load_dataset(
            builder,
            data_files={"train": [str(p) for p in paths]},
            split=split,
            streaming=streaming,
            **extra,
        )
    except Exception as exc:
        where = pattern or str(paths[0])
        raise DataError(
            f"data.source: could not read {where} as {builder}: {describe(exc)}"
        ) from None


def first_non_utf8_byte(path: Path) -> tuple[int, int] | None:
    """(offset, value) of the first byte of ``path`` that is not UTF-8, or None; read in
    blocks, so a large file costs no memory."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                start = offset + exc.start - len(decoder.getstate()[0])
                with path.open("rb") as again:
                    again.seek(start)
                    return start, again.read(1)[0]
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return offset - len(decoder.getstate()[0]), 0
    return None


def check_columns(rows: datasets.Dataset, formatter: Formatter, source: str) -> None:
    """Refuse an empty dataset or one that lacks a column the formatter needs."""
    if len(rows) == 0:
        raise DataError(f"the dataset {source} has no rows (formatter '{formatter.name}').")
    missing = [c for c in formatter.columns() if c not in rows.column_names]
    if missing:
        raise DataError(
            f"the dataset {source} has no column {', '.join(repr(c) for c in missing)}, which "
            f"formatter '{formatter.name}' needs (columns found: {', '.join(rows.column_names)}). "
            f"Rename the column or set the formatter's column option in [data]."
        )


def split_eval(
    rows: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Hold out ``fraction`` of the rows (at least one) for evaluation."""
    split = split_rows(rows, fraction, seed)
    return split.train, split.eval


@dataclass
class Split:
    """Training and held-out rows, with each row's position in the source (0-based)."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    train_positions: Sequence[int]
    eval_positions: Sequence[int]


def split_rows(rows: datasets.Dataset, fraction: float, seed: int) -> Split:
    """Hold out ``fraction`` of the rows (at least one), shuffled by ``seed`` exactly as
    ``datasets``' ``train_test_split`` shuffles (numpy's default generator), keeping where each
    row came from."""
    if fraction <= 0:
        return Split(rows, None, range(len(rows)), [])
    if len(rows) < 2:
        raise DataError(
            f"eval_fraction = {fraction} needs at least 2 rows; the dataset has {len(rows)}."
        )
    import numpy as np

    n_eval = max(1, round(len(rows) * fraction))
    if n_eval >= len(rows):
        raise DataError(
            f"eval_fraction = {fraction} of the {len(rows)} rows holds out {n_eval}, leaving "
            f"none to train on; lower eval_fraction."
        )
    order = np.random.default_rng(seed).permutation(len(rows))
    held, kept = order[:n_eval], order[n_eval:]
    return Split(rows.select(kept), rows.select(held), kept, held)
