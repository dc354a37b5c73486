"""``combine()``: several LoRA adapters trained on the same base -> one adapter (peft's
``add_weighted_adapter``), with a manifest that lists its parents; optionally folded into the
base like a single adapter."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool import store
from adaptool.adapter import check_adapter_dir
from adaptool.card import model_card
from adaptool.errors import AdapterError, AdaptoolError
from adaptool.manifest import MANIFEST, now, read_manifest, write_json
from adaptool.outputs import check_output

if TYPE_CHECKING:
    from adaptool.merge import MergeResult
    from adaptool.registry import Registry

#: peft combination types that take a density (the share of each delta kept)
NEEDS_DENSITY = (
    "ties",
    "ties_svd",
    "dare_linear",
    "dare_ties",
    "dare_linear_svd",
    "dare_ties_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)
COMBINATIONS = ("linear", "cat", "svd", *NEEDS_DENSITY)


@dataclass
class CombineResult:
    output_dir: Path
    combination: str
    weights: list[float]
    parents: list[str]
    merged: MergeResult | None = None


def combine(
    adapters: Sequence[str | Path],
    *,
    output: str | Path,
    weights: Sequence[float] | None = None,
    combination: str = "linear",
    density: float | None = None,
    full: bool = False,
    base: str | None = None,
    overwrite: bool = False,
    registry: Registry | None = None,
    token: str | None = None,
    **merge_options: Any,
) -> CombineResult:
    """Combine ``adapters`` (weights default to 1/n each) into one adapter at ``output``; with
    ``full``, fold the combination into the base and write a merged model there instead."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from adaptool.hub import locate
    from adaptool.merge import TOKENIZER_FILES, _base_dir, merge

    located = [locate(a, token=token) for a in adapters]
    folders = [check_adapter_dir(found.path) for found in located]
    base = base or next((found.base for found in located if found.base), None)
    if len(folders) < 2:
        raise AdaptoolError("combining needs at least two adapters (--adapter A --adapter B).")
    if combination not in COMBINATIONS:
        raise AdaptoolError(
            f"--combine must be one of {', '.join(COMBINATIONS)}, not {combination!r}."
        )
    if combination in NEEDS_DENSITY and density is None:
        raise AdaptoolError(f"--combine {combination} needs --density (e.g. 0.5).")
    weights = list(weights) if weights else [1.0 / len(folders)] * len(folders)
    if len(weights) != len(folders):
        raise AdaptoolError(f"{len(weights)} --weight values for {len(folders)} adapters.")
    out = Path(output).expanduser().resolve()
    check_output(out, overwrite=overwrite, inputs=[*folders, *([base] if base else [])])

    manifests = [read_manifest(f) for f in folders]
    configs = [PeftConfig.from_pretrained(str(f)) for f in folders]
    for folder, config in zip(folders, configs, strict=True):
        if str(config.peft_type) not in ("LORA", "PeftType.LORA"):
            raise AdapterError(
                f"{folder} is a {config.peft_type} adapter; adapters are "
                f"combined with peft's add_weighted_adapter, which takes LoRA only."
            )
    identities = [_base_identity(m, c) for m, c in zip(manifests, configs, strict=True)]
    if len(set(identities)) > 1:
        raise AdapterError(
            "these adapters were trained on different bases ("
            + "; ".join(f"{f.name}: {i}" for f, i in zip(folders, identities, strict=True))
            + "), so their weights cannot be combined."
        )
    backends = {((m or {}).get("quantization") or {}).get("backend", "none") for m in manifests}
    if len(backends) > 1:
        raise AdapterError(
            f"these adapters were trained with different quantization "
            f"({', '.join(sorted(backends))}); combine adapters trained alike."
        )

    base_dir = _base_dir(folders[0], manifests[0], configs[0], base, token)
    model = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.float32, use_safetensors=True
    )
    names = [f"a{i}" for i in range(len(folders))]
    try:
        model = PeftModel.from_pretrained(model, str(folders[0]), adapter_name=names[0])
        for name, folder in zip(names[1:], folders[1:], strict=True):
            model.load_adapter(str(folder), adapter_name=name)
        model.add_weighted_adapter(
            names, weights, "combined", combination_type=combination, density=density
        )
    except (ValueError, RuntimeError) as exc:
        raise AdapterError(
            f"peft could not combine these adapters ({combination}): {exc}"
        ) from None

    work = Path(
        tempfile.mkdtemp(prefix=".combine-", dir=out.parent if out.parent.exists() else None)
    )
    try:
        model.save_pretrained(str(work), selected_adapters=["combined"])
        adapter_dir = work / "combined"
        for name in (*TOKENIZER_FILES, "recipe.toml"):
            if (folders[0] / name).is_file():
                shutil.copy2(folders[0] / name, adapter_dir / name)
        parent = manifests[0] or {}
        write_json(
            adapter_dir / MANIFEST,
            {
                "format": 1,
                "kind": "adapter",
                "created": now(),
                "base_model": parent.get("base_model") or {"name": str(base_dir)},
                "quantization": parent.get("quantization") or {"backend": "none"},
                "formatter": parent.get("formatter"),
                "peft": {
                    "method": "lora",
                    "combined": True,
                    "config": json.loads((adapter_dir / "adapter_config.json").read_text()),
                },
                "combined": {
                    "combination": combination,
                    "weights": weights,
                    "density": density,
                    "parents": [
                        {"path": str(f), "manifest": m}
                        for f, m in zip(folders, manifests, strict=True)
                    ],
                },
            },
        )
        card = model_card(adapter_dir, repo_id=str(out))
        (adapter_dir / "README.md").write_text(card, encoding="utf-8")
        result = CombineResult(out, combination, weights, [str(f) for f in folders])
        if full:
            result.merged = merge(
                adapter_dir,
                token=token,
                output=out,
                base=base,
                overwrite=overwrite,
                registry=registry,
                **merge_options,
            )
        else:
            if out.exists():
                shutil.rmtree(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(adapter_dir, out)
            store.record_output(out, read_manifest(out) or {}, "combined")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _base_identity(manifest: dict | None, config: Any) -> str:
    base = (manifest or {}).get("base_model") or {}
    return str(
        base.get("content_hash")
        or base.get("commit")
        or base.get("name")
        or config.base_model_name_or_path
    )
