"""An adapter dir or a merged model dir, read through the layout without loading weights: what
it is (:func:`~adaptool.artifacts.layout.classify`), its manifest, its configs, and the answers
every later command needs from them — which base, which method, which plugins — decided here
once, with one precedence."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptool.artifacts.layout import (
    ADAPTER_CONFIG,
    MANIFEST,
    MODEL_CONFIG,
    RECIPE,
    TOKENIZER_CONFIG,
    Kind,
    classify,
    top_level,
)
from adaptool.artifacts.manifest import BaseModelRecord, Manifest, read_manifest
from adaptool.artifacts.outputs import unfinished_run
from adaptool.base import peft_type_name
from adaptool.errors import AdapterError, param


@dataclass
class Artifact:
    """A folder adaptool (or plain peft / transformers) wrote, as read from disk."""

    path: Path
    kind: Kind
    manifest: Manifest | None
    #: adapter_config.json (adapters) or config.json (merged models), parsed
    config: dict[str, Any]

    @classmethod
    def read(
        cls,
        folder: Path,
        *,
        expect: Kind | None = None,
        listing: Iterable[str] | None = None,
        where: str | None = None,
    ) -> Artifact:
        """Read ``folder``; with ``expect``, anything else is an AdapterError. ``listing``
        (and ``where``) classify a Hub repo by its file list when ``folder`` holds only its
        small files."""
        if not folder.is_dir():
            what = "an adapter" if expect == Kind.ADAPTER else "an adapter or a merged model"
            raise AdapterError(
                f"{folder} is not a directory; give {what} dir (written by `adaptool train`, "
                f"`adaptool merge` or peft)."
            )
        names = set(top_level(folder) if listing is None else listing)
        if listing is None and unfinished_run(folder):
            raise AdapterError(
                f"{folder} is an output adaptool has not finished writing (it has no "
                f"{MANIFEST}): its training is still running, was interrupted (continue it with "
                f"`adaptool train RECIPE --resume`), or failed while saving."
            )
        # a config that does not parse says more than what else is missing
        name = ADAPTER_CONFIG if ADAPTER_CONFIG in names else MODEL_CONFIG
        config = _read_config(folder / name) if (folder / name).is_file() else {}
        kind = classify(names, where or str(folder))
        if expect is not None and kind != expect:
            raise AdapterError(f"{folder} is a {kind} model dir, not an {expect} dir.")
        return cls(folder, kind, read_manifest(folder), config)

    # -- what later commands ask ------------------------------------------------------------
    def base_name(self, override: str | None = None) -> str:
        """Which base model: ``override`` (``--base``), else the one the manifest records, else
        the one peft's config names."""
        name = (
            override
            or (self.manifest.base_model.name if self.manifest else None)
            or (self.config.get("base_model_name_or_path") if self.kind == Kind.ADAPTER else None)
        )
        if not name:
            raise AdapterError(
                f"{self.path} does not say which base model it adapts; pass {param('base')}."
            )
        return str(name)

    def base_model(self, override: str | None = None) -> BaseModelRecord:
        """The base to load, as it was trained: as recorded (name, revision, the dtype its
        weights were loaded in), or ``override`` (where another copy lives) loaded in the
        recorded dtype still; its revision and hashes are the recorded copy's, so they go."""
        if self.manifest is None:
            return BaseModelRecord(name=self.base_name(override))
        if override is not None:
            return BaseModelRecord(name=override, dtype=self.manifest.base_model.dtype)
        return self.manifest.base_model

    @property
    def method(self) -> str:
        """The PEFT method (``lora``, ``ia3``, ...)."""
        recorded = self.manifest.method if self.manifest else None
        if recorded:
            return recorded
        return peft_type_name(self.config.get("peft_type")).lower() or "adapter"

    @property
    def backend(self) -> str:
        """The quantization backend trained with (``none`` without a manifest)."""
        return self.manifest.backend if self.manifest else "none"

    @property
    def has_tokenizer(self) -> bool:
        return (self.path / TOKENIZER_CONFIG).is_file()

    @property
    def recipe_file(self) -> Path | None:
        path = self.path / RECIPE
        return path if path.is_file() else None

    def describe(self) -> str:
        origin = MANIFEST if self.manifest else "no adaptool manifest"
        return f"{self.path} ({self.kind}, {origin})"


def _read_config(path: Path) -> dict[str, Any]:
    adapter = path.name == ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        if adapter and "peft_type" not in config:
            raise ValueError("no peft_type")
    except (OSError, ValueError) as exc:
        what = "peft adapter config" if adapter else "model config"
        raise AdapterError(f"{path} is not a valid {what} ({exc}).") from None
    return config
