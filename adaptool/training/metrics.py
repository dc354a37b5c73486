"""``metrics.jsonl``: one JSON line per logged step, appended as training goes."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from adaptool.artifacts.layout import METRICS
from adaptool.errors import AdaptoolError, AdaptoolWarning


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The logged records; a last line cut short (a crash or a full disk while appending) is
    dropped with a warning, damage anywhere else is an error naming the line."""
    path = out / METRICS
    if not path.is_file():
        return []
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with a step")
        except ValueError as exc:
            if number == len(lines):
                warnings.warn(
                    f"{path}: its last line is cut short (dropped): {line[:60]!r}",
                    AdaptoolWarning,
                    stacklevel=2,
                )
                break
            raise AdaptoolError(
                f"{path}, line {number}, is not a metrics record ({exc})."
            ) from None
        records.append(record)
    return records


def write_metrics(out: Path, records: list[dict[str, Any]]) -> None:
    tmp = out / f".{METRICS}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, out / METRICS)


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    with (out / METRICS).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def last(records: list[dict[str, Any]], key: str) -> float | None:
    """The newest value of ``key`` in ``records``."""
    for record in reversed(records):
        if key in record:
            return record[key]
    return None
