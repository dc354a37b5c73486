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
from typing import Any

from adaptool.artifacts import index
from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.card import model_card
from adaptool.artifacts.layout import ADAPTER_CONFIG, CARD, RECIPE, TOKENIZER_FILES, Kind
from adaptool.artifacts.manifest import (
    BaseModelRecord,
    Manifest,
    PeftRecord,
    new_manifest,
    read_manifest,
    write_manifest,
)
from adaptool.artifacts.outputs import check_output, mark
from adaptool.base import peft_type_name
from adaptool.errors import AdapterError, AdaptoolError, param
from adaptool.merging.merge import MergeResult, base_folder, merge
from adaptool.merging.options import Combination, choice


@dataclass
class CombineResult:
    output_dir: Path
    combination: str
    weights: list[float]
    parents: list[str]
    merged: MergeResult | None = None


def combine(
    adapters: Sequence[Path],
    *,
    output: str | Path,
    weights: Sequence[float] | None = None,
    combination: Combination | str = Combination.LINEAR,
    density: float | None = None,
    full: bool = False,
    base: str | None = None,
    overwrite: bool = False,
    **merge_options: Any,
) -> CombineResult:
    """Combine the adapter folders ``adapters`` (weights default to 1/n each) into one adapter
    at ``output``; with ``full``, fold the combination into the base (``base`` overriding where
    it lives) and write a merged model there instead."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    combination = choice(Combination, combination, "combination")
    artifacts = [Artifact.read(Path(a), expect=Kind.ADAPTER) for a in adapters]
    folders = [a.path for a in artifacts]
    if len(folders) < 2:
        raise AdaptoolError(
            f"combining needs at least two adapters ({param('adapters', '[A, B]')})."
        )
    if combination.needs_density and density is None:
        raise AdaptoolError(f"{combination} needs {param('density', '0.5')}.")
    weights = list(weights) if weights else [1.0 / len(folders)] * len(folders)
    if len(weights) != len(folders):
        raise AdaptoolError(
            f"{len(weights)} {param('weights', '[...]')} values for {len(folders)} adapters."
        )
    out = Path(output).expanduser().resolve()
    check_output(out, overwrite=overwrite, inputs=[*folders, *([base] if base else [])])

    configs = [PeftConfig.from_pretrained(str(f)) for f in folders]
    for folder, config in zip(folders, configs, strict=True):
        kind = peft_type_name(config.peft_type)
        if kind != "LORA":
            raise AdapterError(
                f"{folder} is a {kind} adapter; adapters are "
                f"combined with peft's add_weighted_adapter, which takes LoRA only."
            )
    identities = [_base_identity(a) for a in artifacts]
    if len(set(identities)) > 1:
        raise AdapterError(
            "these adapters were trained on different bases ("
            + "; ".join(f"{f.name}: {i}" for f, i in zip(folders, identities, strict=True))
            + "), so their weights cannot be combined."
        )
    backends = {a.backend for a in artifacts}
    if len(backends) > 1:
        raise AdapterError(
            f"these adapters were trained with different quantization "
            f"({', '.join(sorted(backends))}); combine adapters trained alike."
        )

    base_dir = base_folder(artifacts[0], base)
    model = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.float32, use_safetensors=True
    )
    names = [f"a{i}" for i in range(len(folders))]
    try:
        model = PeftModel.from_pretrained(model, str(folders[0]), adapter_name=names[0])
        for name, folder in zip(names[1:], folders[1:], strict=True):
            model.load_adapter(str(folder), adapter_name=name)
        model.add_weighted_adapter(
            names, weights, "combined", combination_type=str(combination), density=density
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
        for name in (*TOKENIZER_FILES, RECIPE):
            if (folders[0] / name).is_file():
                shutil.copy2(folders[0] / name, adapter_dir / name)
        manifest = _manifest(artifacts, base_dir, adapter_dir, combination, weights, density)
        write_manifest(adapter_dir, manifest)
        card = model_card(adapter_dir, repo_id=str(out))
        (adapter_dir / CARD).write_text(card, encoding="utf-8")
        result = CombineResult(out, str(combination), weights, [str(f) for f in folders])
        if full:
            result.merged = merge(
                adapter_dir, output=out, base=base, overwrite=overwrite, **merge_options
            )
        else:
            if out.exists():
                shutil.rmtree(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            mark(adapter_dir, "merge")
            os.replace(adapter_dir, out)
            index.record_output(out, read_manifest(out) or manifest, "combined")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _manifest(
    artifacts: list[Artifact],
    base_dir: Path,
    adapter_dir: Path,
    combination: Combination,
    weights: list[float],
    density: float | None,
) -> Manifest:
    parent = artifacts[0].manifest
    return new_manifest(
        Kind.ADAPTER,
        parent.base_model if parent else BaseModelRecord(name=str(base_dir)),
        quantization=parent.quantization if parent else None,
        formatter=parent.formatter if parent else None,
        peft=PeftRecord(
            method="lora",
            combined=True,
            config=json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")),
        ),
        combined={
            "combination": str(combination),
            "weights": weights,
            "density": density,
            "parents": [
                {"path": str(a.path), "manifest": a.manifest.to_dict() if a.manifest else None}
                for a in artifacts
            ],
        },
    )


def _base_identity(artifact: Artifact) -> str:
    if artifact.manifest is not None:
        return artifact.manifest.base_model.identity
    return str(artifact.config.get("base_model_name_or_path"))
