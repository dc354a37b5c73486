"""The provenance manifest (``adaptool.json``) written beside every adapter adaptool makes."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from adaptool.errors import AdapterError

MANIFEST = "adaptool.json"
FORMAT_VERSION = 1
LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "datasets",
    "accelerate",
    "huggingface-hub",
    "safetensors",
    "tokenizers",
)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    from adaptool import __version__

    found = {"adaptool": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_info(path: Path) -> dict[str, Any] | None:
    """Commit (and whether the tree is dirty) of the git repository holding ``path``."""
    folder = path if path.is_dir() else path.parent

    def git(*args: str) -> str:
        run = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return run.stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def content_hash(folder: Path) -> str:
    """sha256 over the names and bytes of a local model's weight and config files."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix == ".safetensors" or p.name == "config.json")
    )
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, None when it has none (a plain peft adapter)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path} is not a readable adaptool manifest: {exc}.") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path} is not a readable adaptool manifest (not a JSON object).")
    return data
