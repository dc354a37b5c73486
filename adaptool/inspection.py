"""What an adapter or merged model is, without loading it: base, method and options, target
modules, parameters, size on disk, provenance and metrics (``adaptool inspect``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from adaptool.adapter import ADAPTER_CONFIG
from adaptool.errors import AdapterError
from adaptool.manifest import MANIFEST, read_manifest
from adaptool.streaming import read_layout

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


def inspect_folder(folder: Path, *, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready description of an adapter dir or a merged model dir."""
    if not folder.is_dir():
        raise AdapterError(f"{folder} is not a directory holding an adapter or a model.")
    manifest = read_manifest(folder) or {}
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
        "created": manifest.get("created"),
        "adaptool_manifest": bool(manifest),
    }
    if (folder / ADAPTER_CONFIG).is_file():
        try:
            config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise AdapterError(f"{folder / ADAPTER_CONFIG} is not valid JSON ({exc}).") from None
        base = (manifest.get("base_model") or {}).get("name") or config.get(
            "base_model_name_or_path"
        )
        peft = manifest.get("peft") or {}
        info |= {
            "kind": "adapter",
            "base_model": base,
            "method": peft.get("method") or str(config.get("peft_type", "")).lower(),
            "options": {k: config[k] for k in OPTION_KEYS if config.get(k) is not None},
            "target_modules": config.get("target_modules"),
            "trainable_params": params,
            "base_params": peft.get("total_params"),
            "quantization": (manifest.get("quantization") or {}).get("backend"),
            "formatter": (manifest.get("formatter") or {}).get("name"),
            "data": (manifest.get("data") or {}).get("source"),
        }
    elif (folder / "config.json").is_file():
        adapter = manifest.get("adapter") or {}
        info |= {
            "kind": "merged",
            "base_model": (manifest.get("base_model") or {}).get("name"),
            "method": adapter.get("peft_type"),
            "params": params,
            "merge": manifest.get("merge"),
            "verification": manifest.get("verification"),
        }
    else:
        raise AdapterError(
            f"{folder} holds neither an adapter ({ADAPTER_CONFIG}) nor a model (config.json)."
        )
    info["metrics"] = _metrics(folder, manifest)
    info["manifest"] = manifest or None
    return info


def _metrics(folder: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    results = dict(manifest.get("results") or {})
    path = folder / "metrics.jsonl"
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
        ("options", "options"),
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


def inspect_target(target: str, *, token: str | None = None) -> dict[str, Any]:
    """Inspect a local folder, a pulled Hub id (its local copy), or a Hub id not pulled yet
    (its small files are fetched; weights are not: their sizes and parameter counts come
    from the Hub's file metadata and safetensors headers)."""
    from adaptool import store
    from adaptool.hub import hub_target

    hub_id = hub_target(target)
    if hub_id is None:
        return inspect_folder(Path(target).expanduser().resolve())
    repo_id, revision = hub_id
    entry = store.pulled(repo_id, revision)
    if entry is not None:
        source = {"repo_id": repo_id, "revision": entry.revision, "sha": entry.sha}
        return inspect_folder(Path(entry.path), source=source)
    return _inspect_remote(repo_id, revision, token)


def _inspect_remote(repo_id: str, revision: str | None, token: str | None) -> dict[str, Any]:
    from huggingface_hub import HfApi, snapshot_download

    from adaptool.hub import hub_errors, progress_on_terminals_only

    progress_on_terminals_only()
    api = HfApi(token=token)
    with hub_errors(repo_id, revision, token):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        small = ["*.json", "recipe.toml", "metrics.jsonl"]
        local = Path(
            snapshot_download(repo_id, revision=info.sha, allow_patterns=small, token=token)
        )
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
    found = inspect_folder(local, source=source)
    found["path"] = f"{repo_id} (not pulled)"
    found["size_bytes"] = sum(s.size or 0 for s in info.siblings or [])
    found["files"] = sorted(s.rfilename for s in info.siblings or [])
    found["trainable_params" if found["kind"] == "adapter" else "params"] = params
    return found
