"""Output directories: which are adaptool's (its marker or its manifest says so), and what
``overwrite`` may replace — what adaptool wrote, never an input of the same command, never a
folder of someone else's (a ``checkpoints/`` or a ``model.safetensors`` proves nothing)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from adaptool import __version__
from adaptool.artifacts.layout import MANIFEST, MARKER
from adaptool.errors import OutputError, param


def mark(folder: Path, command: str) -> None:
    """Mark ``folder`` as an output of adaptool's ``command``."""
    data = {"written_by": "adaptool", "version": __version__, "command": command}
    (folder / MARKER).write_text(json.dumps(data) + "\n", encoding="utf-8")


def unfinished_run(folder: Path) -> bool:
    """Whether ``folder`` is a training run that has not written its manifest yet (running,
    interrupted, or failed while saving): its marker says ``train`` and there is no manifest."""
    if (folder / MANIFEST).is_file() or not (folder / MARKER).is_file():
        return False
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8")).get("command") == "train"
    except (OSError, ValueError, AttributeError):
        return True  # a marker torn by a crash: adaptool's, and not finished


def is_ours(folder: Path) -> bool:
    """Whether adaptool wrote ``folder``: it holds adaptool's marker or manifest."""
    return (folder / MARKER).is_file() or (folder / MANIFEST).is_file()


def check_output(out: Path, *, overwrite: bool, inputs: Iterable[Path | str] = ()) -> None:
    """Refuse an existing, non-empty ``out`` unless ``overwrite``; with it, refuse still when
    ``out`` is a file, holds one of the command's ``inputs``, or is not an adaptool output."""
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if source == out or out in source.parents:
            raise OutputError(
                f"the output {out} would replace the input {source}; choose another "
                f"{param('output', 'DIR')}."
            )
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(
            f"the output {out} is a file; choose a folder for {param('output', 'DIR')}."
        )
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputError(
            f"the output directory {out} already exists and is not empty; use "
            f"{param('overwrite', 'True')} to replace it or choose another "
            f"{param('output', 'DIR')}."
        )
    if not is_ours(out):
        raise OutputError(
            f"{param('overwrite', 'True')}: {out} does not look like something adaptool wrote "
            f"(no {MANIFEST} or {MARKER} marker), so it is left alone; remove it yourself or "
            f"choose another {param('output', 'DIR')}."
        )


def sync_tree(folder: Path) -> None:
    """fsync every file directly in ``folder``, then the folder itself."""
    for path in folder.iterdir():
        if path.is_file():
            sync(path)
    sync(folder)


def sync(path: Path) -> None:
    """fsync a file or a folder (its entries), so a rename after it is never ahead of the data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
