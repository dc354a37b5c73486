"""Output directories: what ``overwrite`` may replace. It replaces what adaptool wrote, never
an input of the same command, never a folder of someone else's."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from adaptool.artifacts.layout import MANIFEST, MARKERS
from adaptool.errors import OutputError, param


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
    if not any((out / marker).exists() for marker in MARKERS):
        raise OutputError(
            f"{param('overwrite', 'True')}: {out} does not look like something adaptool wrote "
            f"(no {MANIFEST}, adapter or model files), so it is left alone; remove it yourself "
            f"or choose another {param('output', 'DIR')}."
        )
