"""``merge()``: fold an adapter into its full-precision base, one safetensors shard at a time.

The orchestration: the adapter read through its manifest, the base located, each shard
streamed (tensors the merge leaves alone copied byte for byte, adapted layers folded by
:mod:`~adaptool.merging.fold`), the result verified (:mod:`~adaptool.merging.verify`) and moved
into place only then. Peak memory stays near one shard plus the adapter.

An adapter trained on a quantized base is never merged into quantized weights:
``into="dequantized"`` folds it into the base rounded exactly as the quantizer rounded it during
training (every quantized layer, adapted or not, so the merged model computes what was
trained); ``into="original"`` folds it into the original full-precision weights, as the
reference QLoRA script does by reloading the base in fp16.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adaptool.artifacts import index
from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.card import model_card
from adaptool.artifacts.fit import check_fits
from adaptool.artifacts.layout import (
    ADAPTER_WEIGHTS,
    CARD,
    GENERATION_CONFIG,
    MODEL_CONFIG,
    MODEL_INDEX,
    MODEL_WEIGHTS,
    TOKENIZER_FILES,
    Kind,
)
from adaptool.artifacts.loading import recorded_quantizer
from adaptool.artifacts.manifest import Manifest, new_manifest, write_json, write_manifest
from adaptool.artifacts.method import recorded_method
from adaptool.artifacts.outputs import check_output, mark
from adaptool.base import LayerToFold, PeftMethod
from adaptool.errors import AdapterError, ModelError, param
from adaptool.hub.client import bounded_requests
from adaptool.merging.fold import base_key, group_by_module
from adaptool.merging.options import Dtype, Into, choice
from adaptool.merging.streaming import ByteRange, read_layout, tag_of, write_streamed
from adaptool.merging.verify import verify_merge
from adaptool.modeling import PRECISION_DTYPES

FLOAT_TAGS = ("F32", "F16", "BF16", "F64")


@dataclass
class MergeResult:
    output_dir: Path
    dtype: str
    into: str | None
    quantization: str
    merged_modules: int
    shards: int
    seconds: float
    verification: dict[str, Any] | None = None
    manifest: Manifest | None = None


def merge(
    adapter: Path,
    *,
    output: str | Path,
    dtype: Dtype | str = Dtype.AUTO,
    into: Into | str = Into.DEQUANTIZED,
    base: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> MergeResult:
    """Merge the adapter folder ``adapter`` into its base (``base`` overriding where the base
    lives: a folder or a Hub id) and write a standalone model to ``output``."""
    import torch

    started = time.monotonic()
    dtype, into = choice(Dtype, dtype, "dtype"), choice(Into, into, "into")
    artifact = Artifact.read(Path(adapter), expect=Kind.ADAPTER)
    folder = artifact.path
    out = Path(output).expanduser().resolve()
    check_output(out, overwrite=overwrite, inputs=[folder, *([base] if base else [])])
    method = recorded_method(artifact)
    if not method.mergeable:
        raise AdapterError(
            f"{folder} is a {method.title()} adapter, which cannot be merged: "
            f"{method.not_mergeable_because}."
        )
    peft_config = _peft_config(folder)
    base_dir = base_folder(artifact, base)
    check_fits(artifact, base=str(base_dir))  # on the meta device, before memory is spent
    base_config = json.loads((base_dir / MODEL_CONFIG).read_text(encoding="utf-8"))
    manifest = artifact.manifest
    trained_dtype = manifest.base_model.dtype if manifest else None
    out_dtype = _output_dtype(dtype, trained_dtype or _config_dtype(base_config))
    quantizer = recorded_quantizer(manifest, str(folder))
    dequantize = quantizer.quantized and into == Into.DEQUANTIZED
    quantized_layers = _quantized_layers(base_dir, quantizer) if dequantize else set()
    load_dtype = getattr(torch, trained_dtype or "float32")

    by_module, shared = group_by_module(_load_adapter(folder), method)
    shards = _base_shards(base_dir)
    layouts = {shard: {e.name: e for e in read_layout(shard)} for shard in shards}
    shard_of = {name: shard for shard, entries in layouts.items() for name in entries}
    targets = {base_key(module, set(shard_of)): module for module in by_module}
    missing = [m for k, m in targets.items() if k is None]
    if missing:
        raise AdapterError(
            f"the base {base_dir} has no weight for the adapted layer(s) "
            f"{', '.join(missing[:3])}: the adapter was trained on another model; pass "
            f"{param('base')}."
        )
    folding = _Folding(
        shard_of,
        targets,
        (method, by_module, shared, peft_config),
        quantizer,
        quantized_layers,
        load_dtype,
    )

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        weight_map: dict[str, str] = {}
        out_tag = tag_of(out_dtype)
        for shard in shards:
            entries = layouts[shard]
            layout = [
                (e.name, out_tag if e.tag in FLOAT_TAGS else e.tag, e.shape)
                for e in entries.values()
            ]

            def produce(key: str, shard: Path = shard, entries: dict = entries) -> Any:
                entry = entries[key]
                changes = folding.changes(key)
                if entry.tag not in FLOAT_TAGS or (entry.tag == out_tag and not changes):
                    return ByteRange(shard, entry.start, entry.length)
                return folding.tensor(key).to(out_dtype)

            write_streamed(tmp / shard.name, layout, produce)
            weight_map.update({key: shard.name for key, _, _ in layout})
        if len(shards) > 1:
            total = sum((tmp / s.name).stat().st_size for s in shards)
            write_json(
                tmp / MODEL_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map}
            )
        _copy_side_files(base_dir, artifact, tmp, base_config, out_dtype)
        result = MergeResult(
            output_dir=out,
            dtype=str(out_dtype).removeprefix("torch."),
            into=str(into) if quantizer.quantized else None,
            quantization=quantizer.name,
            merged_modules=folding.merged,
            shards=len(shards),
            seconds=0.0,
        )
        if verify:
            result.verification = verify_merge(
                artifact,
                tmp,
                dtype=Dtype({v: k for k, v in PRECISION_DTYPES.items()}[result.dtype]),
                base_dir=base_dir,
                quantizer=quantizer,
                load_dtype=load_dtype,
                dequantize=dequantize,
            )
        result.seconds = round(time.monotonic() - started, 2)
        result.manifest = _manifest(artifact, base, base_dir, peft_config, result)
        card = model_card(tmp, repo_id=str(out), manifest=result.manifest)
        (tmp / CARD).write_text(card, encoding="utf-8")
        write_manifest(tmp, result.manifest)
        mark(tmp, "merge")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    index.record_output(out, result.manifest, "merged")
    return result


class _Folding:
    """The tensors a merge changes, produced on demand: an adapted layer's weight and bias
    are folded together when the first of them is asked for (they may lie in different
    shards) and the other kept until it is asked for; a quantized layer's weight is rounded as
    the quantizer rounded it."""

    def __init__(
        self,
        shard_of: dict[str, Path],
        targets: dict[str, str],
        adapter: tuple[PeftMethod, dict[str, dict[str, Any]], dict[str, Any], Any],
        quantizer: Any,
        quantized_layers: set[str],
        load_dtype: Any,
    ) -> None:
        self.shard_of = shard_of
        #: the method plugin, its tensors by module, its shared tensors, the peft config
        self.method, self.by_module, self.shared, self.config = adapter
        self.quantizer, self.quantized_layers, self.load_dtype = (
            quantizer,
            quantized_layers,
            load_dtype,
        )
        #: checkpoint key -> (module, weight key) for every adapted weight and its bias
        self.folded_keys: dict[str, tuple[str, str]] = {}
        for weight_key, module in targets.items():
            self.folded_keys[weight_key] = (module, weight_key)
            bias_key = weight_key.removesuffix("weight") + "bias"
            if bias_key in shard_of:
                self.folded_keys[bias_key] = (module, weight_key)
        self.pending: dict[str, Any] = {}
        self.merged = 0

    def changes(self, key: str) -> bool:
        return key in self.folded_keys or self._requantized(key)

    def tensor(self, key: str) -> Any:
        """The tensor ``key`` as the merged model holds it, in float32."""
        if key in self.pending:
            return self.pending.pop(key)
        if key not in self.folded_keys:
            tensor = self._read(key)
            return self._round(key, tensor) if self._requantized(key) else tensor
        module, weight_key = self.folded_keys[key]
        bias_key = weight_key.removesuffix("weight") + "bias"
        weight = self._round(weight_key, self._read(weight_key))
        bias = self._read(bias_key) if bias_key in self.folded_keys else None
        weight, bias = self.method.fold(
            LayerToFold(module, weight, bias, self.by_module[module], self.shared, self.config)
        )
        self.merged += 1
        folded = {weight_key: weight, bias_key: bias}
        for other, value in folded.items():
            if other != key and value is not None:
                self.pending[other] = value
        return folded[key]

    def _requantized(self, key: str) -> bool:
        return key.endswith(".weight") and key.removesuffix(".weight") in self.quantized_layers

    def _round(self, key: str, tensor: Any) -> Any:
        if not self._requantized(key):
            return tensor
        return self.quantizer.round_trip(tensor, dtype=self.load_dtype)

    def _read(self, key: str) -> Any:
        from safetensors import safe_open

        # a fresh mapping per tensor: pages read stay resident only while in use
        with safe_open(str(self.shard_of[key]), framework="pt") as reader:
            return reader.get_tensor(key).float()


# -- adapter and base ---------------------------------------------------------------------------


def _peft_config(folder: Path) -> Any:
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(folder))
    if getattr(config, "fan_in_fan_out", False):
        raise AdapterError(
            f"{folder} adapts Conv1D layers (fan_in_fan_out, as in GPT-2), which adaptool's "
            f"streamed merge does not fold yet."
        )
    return config


def base_folder(artifact: Artifact, override: str | None) -> Path:
    """The local folder of ``artifact``'s base (``override`` if given): a folder as is, a Hub
    id downloaded (safetensors and configs only; pinned to the recorded commit unless
    overridden)."""
    name = artifact.base_name(override)
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_absolute() or name.startswith((".", "~")):
        raise ModelError(
            f"the base model folder {path} does not exist; pass {param('base', 'PATH')}."
        )
    revision = None if override else artifact.base_model().commit
    bounded_requests()
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name,
                revision=revision,
                allow_patterns=["*.safetensors", "*.json", "*.jinja", "*.model", "*.txt"],
            )
        )
    except Exception as exc:
        raise ModelError(
            f"could not fetch the base model '{name}' from the Hub ({type(exc).__name__}); "
            f"pass {param('base', 'PATH')} with a local copy."
        ) from None


def _config_dtype(config: dict[str, Any]) -> str | None:
    return config.get("dtype") or config.get("torch_dtype")


def _output_dtype(dtype: Dtype, auto: str | None) -> Any:
    """``dtype``; ``auto`` is ``auto``'s dtype name (the dtype the adapter was trained with,
    else the base's own), float32 when unknown."""
    import torch

    if dtype == Dtype.AUTO:
        name = auto if auto in PRECISION_DTYPES.values() else "float32"
        return getattr(torch, name)
    return getattr(torch, PRECISION_DTYPES[str(dtype)])


def _load_adapter(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(folder / ADAPTER_WEIGHTS))
    except Exception as exc:
        raise AdapterError(
            f"{folder / ADAPTER_WEIGHTS} is not readable safetensors: {type(exc).__name__}: {exc}"
        ) from None


def _base_shards(base_dir: Path) -> list[Path]:
    index_file = base_dir / MODEL_INDEX
    if index_file.is_file():
        files = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values()
        return [base_dir / f for f in sorted(set(files))]
    single = base_dir / MODEL_WEIGHTS
    if single.is_file():
        return [single]
    raise ModelError(f"{base_dir} holds no safetensors weights (adaptool reads no pickle files).")


def _quantized_layers(base_dir: Path, quantizer: Any) -> set[str]:
    """Checkpoint names of the linear layers the quantizer quantized (found on a model built
    on the meta device: no memory, no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(base_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = set(quantizer.quantized_layers(model))
    prefix = getattr(model, "base_model_prefix", "")
    if prefix:  # checkpoints may drop the model prefix
        names |= {n.removeprefix(prefix + ".") for n in names if n.startswith(prefix + ".")}
    return names


def _copy_side_files(
    base_dir: Path, adapter: Artifact, tmp: Path, config: dict[str, Any], out_dtype: Any
) -> None:
    config = dict(config)
    config["dtype"] = str(out_dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    config.pop("quantization_config", None)
    config["use_cache"] = True
    write_json(tmp / MODEL_CONFIG, config)
    if (base_dir / GENERATION_CONFIG).is_file():
        shutil.copy2(base_dir / GENERATION_CONFIG, tmp / GENERATION_CONFIG)
    source = adapter.path if adapter.has_tokenizer else base_dir
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)


def _manifest(
    artifact: Artifact, base: str | None, base_dir: Path, config: Any, result: MergeResult
) -> Manifest:
    adapter_manifest = artifact.manifest
    return new_manifest(
        Kind.MERGED,
        replace(artifact.base_model(base), name=str(base_dir)),
        adapter={
            "path": str(artifact.path),
            "peft_type": str(config.peft_type),
            "manifest": adapter_manifest.to_dict() if adapter_manifest else None,
        },
        formatter=adapter_manifest.formatter if adapter_manifest else None,
        merge={
            "dtype": result.dtype,
            "into": result.into,
            "trained_quantization": result.quantization,
            "merged_modules": result.merged_modules,
            "shards": result.shards,
            "seconds": result.seconds,
        },
        verification=result.verification,
    )
