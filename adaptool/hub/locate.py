"""Hub id or local path? The one rule, and :func:`locate`, which turns a command's argument
(a local folder, or a Hub id ``org/name[@revision]``) into a local folder — its pulled copy,
pulled and checked on first use. Commands call it at the edge; the library below takes
folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from adaptool.artifacts import index
from adaptool.errors import HubError
from adaptool.hub.pull import pull

#: the Hub's repo-id grammar: ``name`` or ``namespace/name``
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: suffixes of local files, which a Hub id never has
LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow", ".tsv", ".safetensors")


def is_hub_id(name: str | None, *, relative_to: Path | None = None) -> bool:
    """True when ``name`` names a Hub repo rather than a local path: it is not written as a
    path (``./x``, ``../x``, ``/x``, ``~/x``), has no local-file suffix, does not exist on disk
    (relative to ``relative_to``, default the current folder), and fits the Hub's id grammar."""
    if not name or name.startswith((".", "/", "~")) or name.lower().endswith(LOCAL_SUFFIXES):
        return False
    if not name.isprintable():  # no path or repo id holds a control character
        return False
    try:
        if ((relative_to or Path.cwd()) / Path(name).expanduser()).exists():
            return False
    except (OSError, ValueError):  # a name too long for a path
        pass
    return bool(REPO_ID.match(name))


def hub_target(target: str | Path) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``target`` names a Hub repo (``org/name`` or
    ``org/name@revision``) rather than a local path; None for a local path."""
    text = str(target)
    repo_id, _, revision = text.partition("@")
    if Path(text).expanduser().exists() or "/" not in repo_id or not is_hub_id(repo_id):
        return None
    return repo_id, revision or None


@dataclass
class Located:
    """Where a command's adapter (or merged model) argument lies on disk."""

    path: Path
    #: the --base given when it was pulled (later commands use it unless given their own)
    base: str | None = None
    repo_id: str | None = None
    sha: str | None = None
    revision: str | None = None

    def base_or(self, override: str | None) -> str | None:
        """``override`` (the command's own --base) if given, else the base recorded at pull."""
        return override or self.base


def locate(target: str | Path, *, pull_missing: bool = True) -> Located | None:
    """A local folder as is; a Hub id (``org/name`` or ``org/name@revision``) that is not a
    local folder resolves to its pulled copy, pulling it (with the checks) on first use —
    or, with ``pull_missing=False``, None when it has not been pulled."""
    hub_id = hub_target(target)
    if hub_id is None:
        return Located(Path(target).expanduser().resolve())
    repo_id, revision = hub_id
    entry = index.pulled(repo_id, revision)
    if entry is not None:
        return Located(Path(entry.path), entry.base_override, repo_id, entry.sha, entry.revision)
    if not pull_missing:
        return None
    try:
        result = pull(repo_id, revision=revision)
    except HubError as exc:
        raise HubError(f"{target} is not a local folder; as a Hub id: {exc}") from None
    return Located(result.path, None, repo_id, result.sha, result.revision)
