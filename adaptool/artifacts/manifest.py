"""The provenance manifest (``adaptool.json``) of everything adaptool writes: a typed
:class:`Manifest` with one builder (:func:`new_manifest`, used by train, merge and combine), one
reader (:func:`read_manifest`) and one writer (:func:`write_manifest`).

The JSON keeps its shape across versions: format 1 manifests (quantization options inline)
read as well as format 2 ones (options under ``quantization.options``); keys this version does
not know are kept as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from adaptool import __version__
from adaptool.artifacts.layout import MANIFEST, Kind
from adaptool.base import peft_type_name
from adaptool.errors import AdapterError, describe

FORMAT_VERSION = 2
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


@dataclass
class BaseModelRecord:
    """The base model an adapter was trained on (or a merged model was made from)."""

    name: str
    revision: str | None = None
    #: the dtype its (non-quantized) weights were loaded in for training
    dtype: str | None = None
    #: for a local base: sha256 over its weights and config; for a Hub base: the commit
    content_hash: str | None = None
    commit: str | None = None
    model_type: str | None = None

    @property
    def identity(self) -> str:
        """What tells two bases apart: content hash, commit, or else the name."""
        return self.content_hash or self.commit or self.name


@dataclass
class PluginRecord:
    """A plugin as recorded: its name, the version of its behaviour, its options."""

    name: str
    version: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: the package that provided it, and that package's version ("adaptool" for built-ins)
    distribution: str | None = None
    distribution_version: str | None = None


@dataclass
class PeftRecord:
    """The PEFT method and its settings (as the recipe's [peft] section had them)."""

    method: str
    version: str | None = None
    r: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    bias: str | None = None
    target_modules: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    trainable_params: int | None = None
    total_params: int | None = None
    init_adapter: str | None = None
    #: a combination of adapters (``adaptool merge --adapter A --adapter B``)
    combined: bool = False
    config: dict[str, Any] | None = None
    distribution: str | None = None
    distribution_version: str | None = None


@dataclass
class Manifest:
    """What ``adaptool.json`` records. Sections a kind of output does not have are None."""

    kind: Kind
    base_model: BaseModelRecord
    created: str = field(default_factory=now)
    format: int = FORMAT_VERSION
    quantization: PluginRecord | None = None
    peft: PeftRecord | None = None
    formatter: PluginRecord | None = None
    data: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    seed: int | None = None
    libraries: dict[str, str] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    results: dict[str, Any] | None = None
    #: a few training examples as formatted ({"prompt", "completion"}): what later commands
    #: (merge's verification) run without reloading the data
    samples: list[dict[str, str]] | None = None
    #: the held-out split: {"file", "rows", "sha256", "source", "fingerprint"}
    heldout: dict[str, Any] | None = None
    #: for a merged model: {"path", "peft_type", "manifest"} of the adapter folded in
    adapter: dict[str, Any] | None = None
    merge: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    combined: dict[str, Any] | None = None
    #: keys this version of adaptool does not know, kept as read
    extra: dict[str, Any] = field(default_factory=dict)

    # -- accessors ------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The quantization backend trained with (``none`` when unrecorded)."""
        return self.quantization.name if self.quantization else "none"

    @property
    def method(self) -> str | None:
        """The PEFT method: the recorded one, or a merged model's adapter's peft type."""
        if self.peft is not None:
            return self.peft.method
        return peft_type_name((self.adapter or {}).get("peft_type")).lower() or None

    def adapter_manifest(self) -> Manifest | None:
        """For a merged model: the manifest of the adapter folded in."""
        nested = (self.adapter or {}).get("manifest")
        return Manifest.from_dict(nested) if isinstance(nested, dict) else None

    @property
    def trained_base(self) -> BaseModelRecord:
        """The base as trained on (for a merged model: its adapter's base, else its own)."""
        inner = self.adapter_manifest()
        return inner.base_model if inner is not None else self.base_model

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "quantization":
                value = {"backend": value.name} | {
                    k: v for k, v in asdict(value).items() if k != "name" and v is not None
                }
            elif f.name == "kind":
                value = str(value)
            elif hasattr(value, "__dataclass_fields__"):
                value = asdict(value)
            out[f.name] = value
        return out | self.extra

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Read a manifest's JSON (format 1 or 2); KeyError/TypeError/ValueError when it is
        not one."""
        data = dict(data)
        known = {f.name for f in fields(cls)}
        extra = {k: data.pop(k) for k in list(data) if k not in known or k == "extra"}
        base = data.pop("base_model", None) or {}
        kwargs: dict[str, Any] = {
            "kind": Kind(data.pop("kind", "adapter")),
            "base_model": _record(BaseModelRecord, base),
        }
        for key in ("quantization", "formatter", "peft"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise TypeError(f"{key} must be a JSON object, found {type(data[key]).__name__}")
        quantization = data.pop("quantization", None)
        if isinstance(quantization, dict):
            q = dict(quantization)
            name = q.pop("backend", "none")
            ver = q.pop("version", None)
            options = q.pop("options", None)
            dist = {k: q.pop(k, None) for k in ("distribution", "distribution_version")}
            kwargs["quantization"] = PluginRecord(
                name, ver, dict(options) if isinstance(options, dict) else q, **dist
            )
        formatter = data.pop("formatter", None)
        if isinstance(formatter, dict):
            kwargs["formatter"] = _record(PluginRecord, formatter)
        peft = data.pop("peft", None)
        if isinstance(peft, dict):
            kwargs["peft"] = _record(PeftRecord, peft)
        for key, value in data.items():
            kwargs[key] = value
        return cls(**kwargs, extra=extra)


def _record(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object, found {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


# -- building ----------------------------------------------------------------------------------


def new_manifest(kind: Kind, base_model: BaseModelRecord, **sections: Any) -> Manifest:
    """The one builder: a manifest of ``kind`` stamped with the time and library versions;
    ``sections`` are the rest of :class:`Manifest`'s fields."""
    return Manifest(kind=kind, base_model=base_model, libraries=library_versions(), **sections)


def library_versions() -> dict[str, str]:
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
        _update(digest, path)
    return "sha256:" + digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes (hex)."""
    digest = hashlib.sha256()
    _update(digest, path)
    return digest.hexdigest()


def _update(digest: Any, path: Path) -> None:
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


# -- reading and writing -----------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json(folder / MANIFEST, manifest.to_dict())


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, None when it has none (a plain peft adapter)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return Manifest.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AdapterError(
            f"{path} is not a readable adaptool manifest: {describe(exc)}."
        ) from None
