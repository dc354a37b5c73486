"""What an adapter or merged model is, without loading it: base, method and options, target
modules, parameters, size on disk, provenance and metrics (``adaptool inspect``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.layout import MANIFEST, METRICS, Kind
from adaptool.artifacts.method import describe_method, format_hyperparameters
from adaptool.errors import AdapterError
from adaptool.hub.client import hub_errors, progress_on_terminals_only
from adaptool.hub.locate import hub_target, locate
from adaptool.merging.streaming import read_layout

#: adapter_config.json keys shown as the method's options (those present)
OPTION_KEYS = (
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_dora",
    "use_rslora",
    "init_lora_weights",
    "bias",
    "feedforward_modules",
    "alpha",
    "rank_dropout",
    "module_dropout",
    "num_virtual_tokens",
    "modules_to_save",
    "task_type",
)


def inspect_folder(
    folder: Path, *, source: dict[str, Any] | None = None, artifact: Artifact | None = None
) -> dict[str, Any]:
    """A JSON-ready description of an adapter dir or a merged model dir (``artifact``: the
    folder as already read, for a Hub repo's small files)."""
    artifact = artifact or Artifact.read(folder)
    manifest = artifact.manifest
    weights = sorted(folder.glob("*.safetensors"))
    params = 0
    for path in weights:
        try:
            params += sum(math.prod(e.shape) for e in read_layout(path))
        except (OSError, ValueError, KeyError) as exc:
            raise AdapterError(f"{path} is not a readable safetensors file ({exc}).") from None
    info: dict[str, Any] = {
        "path": str(folder),
        "source": source,
        "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
        "created": manifest.created if manifest else None,
        "adaptool_manifest": manifest is not None,
        "kind": str(artifact.kind),
        "method": artifact.method,
    }
    config = artifact.config
    if artifact.kind == Kind.ADAPTER:
        title, hyper = describe_method(artifact.method, config)
        info |= {
            "method_name": title,
            "hyperparameters": hyper,
            "base_model": _base_name(artifact),
            "options": {k: config[k] for k in OPTION_KEYS if config.get(k) is not None},
            "target_modules": config.get("target_modules"),
            "trainable_params": params,
            "base_params": manifest.peft.total_params if manifest and manifest.peft else None,
            "quantization": manifest.backend if manifest else None,
            "formatter": manifest.formatter.name if manifest and manifest.formatter else None,
            "data": (manifest.data or {}).get("source") if manifest else None,
        }
    else:
        info |= {
            "base_model": manifest.base_model.name if manifest else None,
            "method": manifest.method if manifest else None,
            "params": params,
            "merge": manifest.merge if manifest else None,
            "verification": manifest.verification if manifest else None,
        }
    info["metrics"] = _metrics(folder, manifest.results if manifest else None)
    info["manifest"] = manifest.to_dict() if manifest else None
    return info


def _metrics(folder: Path, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    results = dict(recorded or {})
    path = folder / METRICS
    if path.is_file():
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        losses = [r["loss"] for r in records if "loss" in r]
        evals = [r["eval_loss"] for r in records if "eval_loss" in r]
        if losses:
            results.setdefault("first_train_loss", losses[0])
            results.setdefault("train_loss", losses[-1])
        if evals:
            results.setdefault("best_eval_loss", min(evals))
        results["logged_steps"] = len(records)
    return results or None


def summary_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows for the terminal."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            return ", ".join(map(str, value))
        if isinstance(value, dict):
            return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
        return str(value)

    rows = [("path", info["path"]), ("kind", info["kind"])]
    if info.get("source"):
        src = info["source"]
        label = "pulled from" if src.get("pulled", True) else "on the Hub"
        rows.append((label, f"{src['repo_id']} @ {src.get('revision')} ({src['sha']})"))
    keys = (
        ("base_model", "base model"),
        ("method", "method"),
        ("hyperparameters", "settings"),
        ("options", "peft options"),
        ("target_modules", "target modules"),
        ("trainable_params", "trainable params"),
        ("params", "params"),
        ("quantization", "trained on"),
        ("formatter", "formatter"),
        ("data", "data"),
        ("merge", "merge"),
    )
    for key, label in keys:
        value = info.get(key)
        if value in (None, "", {}, []):
            continue
        if key == "method" and info.get("method_name"):
            value = f"{info['method_name']} ({value})"
        if key == "hyperparameters":
            value = format_hyperparameters(value)
        if key == "target_modules" and isinstance(value, list) and len(value) > 6:
            leaves = sorted({name.rsplit(".", 1)[-1] for name in value})
            value = f"{', '.join(leaves)} ({len(value)} modules)"
        if key in ("trainable_params", "params"):
            value = f"{value:,}"
            if key == "trainable_params" and info.get("base_params"):
                value += f" ({100 * info['trainable_params'] / info['base_params']:.2f} % of base)"
        rows.append((label, fmt(value)))
    rows.append(("size on disk", _size(info["size_bytes"])))
    rows.append(("created", info.get("created") or "unknown (no adaptool manifest)"))
    if info.get("metrics"):
        rows.append(("metrics", fmt(info["metrics"])))
    manifest = info.get("manifest") or {}
    libs = manifest.get("libraries") or {}
    if libs:
        rows.append(("made with", f"adaptool {libs.get('adaptool')}, peft {libs.get('peft')}"))
    rows.append(("provenance", MANIFEST if info.get("adaptool_manifest") else "none"))
    return rows


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def inspect_target(target: str) -> dict[str, Any]:
    """Inspect a local folder, a pulled Hub id (its local copy), or a Hub id not pulled yet
    (its small files are fetched; weights are not: their sizes and parameter counts come
    from the Hub's file metadata and safetensors headers)."""
    located = locate(target, pull_missing=False)
    if located is None:
        return _inspect_remote(*hub_target(target))
    source = None
    if located.repo_id is not None:
        source = {"repo_id": located.repo_id, "revision": located.revision, "sha": located.sha}
    return inspect_folder(located.path, source=source)


def _inspect_remote(repo_id: str, revision: str | None) -> dict[str, Any]:
    from huggingface_hub import HfApi, snapshot_download

    progress_on_terminals_only()
    api = HfApi()
    with hub_errors(repo_id, revision):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        small = ["*.json", "recipe.toml", "metrics.jsonl"]
        local = Path(snapshot_download(repo_id, revision=info.sha, allow_patterns=small))
        weights = [s.rfilename for s in info.siblings or [] if s.rfilename.endswith(".safetensors")]
        params = 0
        for name in weights:  # each file's header only (a range request), not its tensors
            try:
                meta = api.parse_safetensors_file_metadata(repo_id, name, revision=info.sha)
                params += sum(meta.parameter_count.values())
            except (AttributeError, TypeError, KeyError, ValueError):
                raise AdapterError(
                    f"{repo_id}: {name} is not a readable safetensors file."
                ) from None
    source = {"repo_id": repo_id, "revision": revision or "main", "sha": info.sha, "pulled": False}
    listing = [s.rfilename for s in info.siblings or [] if "/" not in s.rfilename]
    artifact = Artifact.read(local, listing=listing, where=repo_id)
    found = inspect_folder(local, source=source, artifact=artifact)
    found["path"] = f"{repo_id} (not pulled)"
    found["size_bytes"] = sum(s.size or 0 for s in info.siblings or [])
    found["files"] = sorted(s.rfilename for s in info.siblings or [])
    found["trainable_params" if found["kind"] == Kind.ADAPTER else "params"] = params
    return found


def _base_name(artifact: Artifact) -> str | None:
    """The base an adapter names, None when it names none (inspect shows what is there)."""
    try:
        return artifact.base_name()
    except AdapterError:
        return None
