"""``metrics.jsonl``: one JSON line per logged step, appended as training goes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from adaptool.artifacts.layout import METRICS


def read_metrics(out: Path) -> list[dict[str, Any]]:
    path = out / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


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
