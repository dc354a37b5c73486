"""What adaptool made or pulled on this machine: one JSON line per adapter or model written
(trained, merged, combined) or pulled, in ``$ADAPTOOL_HOME/index.jsonl``.

``ADAPTOOL_HOME`` defaults to ``$XDG_DATA_HOME/adaptool`` (``~/.local/share/adaptool``).
``adaptool ls`` reads the index; commands given a Hub id find a pulled copy in it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adaptool.artifacts.manifest import now

if TYPE_CHECKING:
    from adaptool.artifacts.manifest import Manifest

INDEX = "index.jsonl"


def home() -> Path:
    """adaptool's own data folder (made on first write)."""
    if os.environ.get("ADAPTOOL_HOME"):
        return Path(os.environ["ADAPTOOL_HOME"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "adaptool"


@dataclass
class Entry:
    """One thing adaptool wrote or pulled."""

    path: str
    kind: str  # "adapter" | "merged"
    source: str  # "trained" | "merged" | "combined" | "pulled"
    created: str = field(default_factory=now)
    base: str | None = None
    method: str | None = None
    #: for pulled entries: where from and which commit, and the --base given to the pull
    repo_id: str | None = None
    revision: str | None = None
    sha: str | None = None
    base_override: str | None = None

    @property
    def exists(self) -> bool:
        return Path(self.path).is_dir()


def record(entry: Entry) -> None:
    """Append ``entry`` to the index. A failure to record never fails the command that made
    the output (the output is what matters); it is silently skipped."""
    try:
        folder = home()
        folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps(asdict(entry), ensure_ascii=False) + "\n"
        # one short append per entry: concurrent adaptool processes do not interleave lines
        with (folder / INDEX).open("a", encoding="utf-8") as fh:
            fh.write(line)
    except OSError:
        pass


def entries(*, include_missing: bool = False) -> list[Entry]:
    """Index entries, newest record per path (and pulled revision), oldest first; folders
    since deleted are left out unless ``include_missing``."""
    path = home() / INDEX
    if not path.is_file():
        return []
    latest: dict[tuple, Entry] = {}
    known = set(Entry.__dataclass_fields__)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            entry = Entry(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, AttributeError):
            continue  # a line cut short by a crash, or not ours: skip it
        required = (entry.path, entry.kind, entry.source, entry.created)
        if not all(isinstance(v, str) for v in required):
            continue
        # one entry per folder, except that one pulled commit may be known by several names
        key = (entry.path, entry.repo_id, entry.revision)
        latest.pop(key, None)
        latest[key] = entry
    found = list(latest.values())
    return found if include_missing else [e for e in found if e.exists]


def pulled(repo_id: str, revision: str | None = None) -> Entry | None:
    """The newest pulled copy of ``repo_id`` still on disk at ``revision`` (a branch or tag name
    as pulled, or a commit sha or its prefix; None means main)."""
    revision = revision or "main"
    for entry in reversed(entries()):
        if entry.source != "pulled" or entry.repo_id != repo_id:
            continue
        if revision == entry.revision:
            return entry
        if entry.sha and len(revision) >= 7 and entry.sha.startswith(revision):
            return entry
    return None


def record_output(path: Path, manifest: Manifest, source: str) -> None:
    """Record a folder adaptool just wrote, from its manifest."""
    record(
        Entry(
            path=str(path),
            kind=str(manifest.kind),
            source=source,
            created=manifest.created,
            base=manifest.base_model.name,
            method=manifest.method,
        )
    )
