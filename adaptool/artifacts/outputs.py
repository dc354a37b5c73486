"""Output directories: what ``--overwrite`` may replace. It replaces what adaptool wrote, never
an input of the same command, never a folder of someone else's."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from adaptool.errors import AdaptoolError

#: files one of adaptool's outputs (adapter, merged model, training run) always holds
MARKERS = (
    "adaptool.json",
    "metrics.jsonl",
    "checkpoints",
    "adapter_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
)


def check_output(out: Path, *, overwrite: bool, inputs: Iterable[Path | str] = ()) -> None:
    """Refuse an existing, non-empty ``out`` unless ``overwrite``; with it, refuse still when
    ``out`` is a file, holds one of the command's ``inputs``, or is not an adaptool output."""
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if source == out or out in source.parents:
            raise AdaptoolError(
                f"the output {out} would replace the input {source}; choose another --output."
            )
    if not out.exists():
        return
    if not out.is_dir():
        raise AdaptoolError(f"the output {out} is a file; choose a folder for --output.")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise AdaptoolError(
            f"the output directory {out} already exists and is not empty; use --overwrite to "
            f"replace it or choose another --output."
        )
    if not any((out / marker).exists() for marker in MARKERS):
        raise AdaptoolError(
            f"--overwrite: {out} does not look like something adaptool wrote (no "
            f"adaptool.json, adapter or model files), so it is left alone; remove it yourself "
            f"or choose another --output."
        )
