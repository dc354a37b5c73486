"""``merge()``: fold an adapter into its full-precision base, one safetensors shard at a time.

Each adapted layer is folded by peft's own code (the layer alone is wrapped with the adapter
and merged), so every method peft can merge is merged exactly as ``merge_and_unload`` would,
while peak memory stays near one shard plus the adapter. An adapter trained on a quantized base
is never merged into quantized weights: ``into="dequantized"`` folds it into the base rounded
exactly as the quantizer rounded it during training (every quantized layer, adapted or not, so
the merged model computes what was trained); ``into="original"`` folds it into the original
full-precision weights, as the reference QLoRA script does by reloading the base in fp16.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool import store
from adaptool.adapter import ADAPTER_WEIGHTS, check_adapter_dir, quantizer_for
from adaptool.card import model_card
from adaptool.errors import AdapterError, AdaptoolError, ModelError
from adaptool.manifest import MANIFEST, library_versions, now, read_manifest, write_json
from adaptool.modeling import PRECISION_DTYPES
from adaptool.outputs import check_output
from adaptool.streaming import ByteRange, read_layout, tag_of, write_streamed

if TYPE_CHECKING:
    from adaptool.registry import Registry

FLOAT_TAGS = ("F32", "F16", "BF16", "F64")
#: max |Δ logits| between the merged model and the adapter unmerged on the same weights, by
#: output dtype (the merged weights are rounded to it; the rest is float32 arithmetic)
TOLERANCE = {"fp32": 1e-4, "bf16": 0.25, "fp16": 5e-2}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


class MergeVerificationError(AdaptoolError):
    """The merged model does not behave like the adapter it came from."""


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
    manifest: dict[str, Any] = field(default_factory=dict)


def merge(
    adapter: str | Path,
    *,
    output: str | Path,
    dtype: str = "auto",
    into: str = "dequantized",
    base: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
    registry: Registry | None = None,
    token: str | None = None,
) -> MergeResult:
    """Merge ``adapter`` into its base and write a standalone model to ``output``."""
    import torch
    from safetensors import safe_open

    started = time.monotonic()
    from adaptool.hub import locate

    located = locate(adapter, token=token)
    folder = check_adapter_dir(located.path)
    base = base or located.base
    out = Path(output).expanduser().resolve()
    check_output(out, overwrite=overwrite, inputs=[folder, *([base] if base else [])])
    if into not in ("dequantized", "original"):
        raise AdaptoolError(f"--into must be 'dequantized' or 'original', not {into!r}.")
    manifest = read_manifest(folder)
    peft_config = _peft_config(folder)
    base_dir = _base_dir(folder, manifest, peft_config, base, token)
    base_config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    trained_dtype = ((manifest or {}).get("base_model") or {}).get("dtype")
    out_dtype = _output_dtype(dtype, trained_dtype or _config_dtype(base_config))
    out_tag = tag_of(out_dtype)
    quantizer = quantizer_for(manifest, None, registry)
    dequantize = quantizer.quantized and into == "dequantized"
    quantized_layers = _quantized_layers(base_dir, quantizer) if dequantize else set()
    load_dtype = getattr(torch, ((manifest or {}).get("base_model") or {}).get("dtype", "float32"))

    adapter_state = _load_adapter(folder)
    by_module = _group_by_module(adapter_state)
    shards = _base_shards(base_dir)
    names = _tensor_names(shards)
    targets = {_base_key(module, names): module for module in by_module}
    missing = [m for k, m in targets.items() if k is None]
    if missing:
        raise AdapterError(
            f"the base {base_dir} has no weight for the adapted layer(s) "
            f"{', '.join(missing[:3])}: the adapter was trained on another model; pass --base."
        )

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        weight_map: dict[str, str] = {}
        merged = 0
        for shard in shards:
            entries = {entry.name: entry for entry in read_layout(shard)}
            layout = [
                (e.name, tag_of(out_dtype) if e.tag in FLOAT_TAGS else e.tag, e.shape)
                for e in entries.values()
            ]

            def produce(key: str, shard: Path = shard, entries: dict = entries) -> Any:
                nonlocal merged
                entry = entries[key]
                module = key.removesuffix(".weight")
                requantize = module in quantized_layers and key.endswith(".weight")
                changes = key in targets or requantize
                if entry.tag not in FLOAT_TAGS or (entry.tag == out_tag and not changes):
                    return ByteRange(shard, entry.start, entry.length)
                # a fresh mapping per tensor: pages read stay resident only while in use
                with safe_open(str(shard), framework="pt") as one:
                    tensor = one.get_tensor(key).float()
                if requantize:
                    tensor = quantizer.round_trip(tensor, dtype=load_dtype)
                if key in targets:
                    tensor = _fold(tensor, by_module[targets[key]], peft_config, targets[key])
                    merged += 1
                return tensor.to(out_dtype)

            write_streamed(tmp / shard.name, layout, produce)
            weight_map.update({key: shard.name for key, _, _ in layout})
        if len(shards) > 1:
            total = sum((tmp / s.name).stat().st_size for s in shards)
            write_json(
                tmp / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": weight_map},
            )
        _copy_side_files(base_dir, folder, tmp, base_config, out_dtype)
        result = MergeResult(
            output_dir=out,
            dtype=str(out_dtype).removeprefix("torch."),
            into=into if quantizer.quantized else None,
            quantization=quantizer.name,
            merged_modules=merged,
            shards=len(shards),
            seconds=0.0,
        )
        if verify:
            result.verification = verify_merge(
                folder,
                tmp,
                result,
                base_dir=base_dir,
                quantizer=quantizer,
                load_dtype=load_dtype,
                registry=registry,
            )
        result.seconds = round(time.monotonic() - started, 2)
        result.manifest = _manifest(folder, manifest, base_dir, peft_config, result)
        card = model_card(tmp, repo_id=str(out), manifest=result.manifest)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        write_json(tmp / MANIFEST, result.manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    store.record_output(out, result.manifest, "merged")
    return result


# -- adapter and base ---------------------------------------------------------------------------


def _peft_config(folder: Path) -> Any:
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(folder))
    if config.is_prompt_learning:
        raise AdapterError(
            f"{folder} is a {config.peft_type} adapter (virtual tokens), which has no weights to "
            f"fold into the base; run it with `adaptool generate` instead of merging it."
        )
    if getattr(config, "fan_in_fan_out", False):
        raise AdapterError(
            f"{folder} adapts Conv1D layers (fan_in_fan_out, as in GPT-2), which adaptool's "
            f"streamed merge does not fold yet."
        )
    return config


def _base_dir(
    folder: Path, manifest: dict | None, config: Any, base: str | None, token: str | None
) -> Path:
    name = (
        base
        or ((manifest or {}).get("base_model") or {}).get("name")
        or config.base_model_name_or_path
    )
    if not name:
        raise AdapterError(f"{folder} does not say which base model it adapts; pass --base.")
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_absolute() or name.startswith((".", "~")):
        raise ModelError(f"the base model folder {path} does not exist; pass --base PATH.")
    revision = None if base else ((manifest or {}).get("base_model") or {}).get("commit")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name,
                revision=revision,
                token=token,
                allow_patterns=["*.safetensors", "*.json", "*.jinja", "*.model", "*.txt"],
            )
        )
    except Exception as exc:
        raise ModelError(
            f"could not fetch the base model '{name}' from the Hub ({type(exc).__name__}); "
            f"pass --base with a local copy."
        ) from None


def _config_dtype(config: dict[str, Any]) -> str | None:
    return config.get("dtype") or config.get("torch_dtype")


def _output_dtype(dtype: str, auto: str | None) -> Any:
    """``--dtype``; ``auto`` is ``auto``'s dtype name (the dtype the adapter was trained with,
    else the base's own), float32 when unknown."""
    import torch

    if dtype == "auto":
        name = auto if auto in PRECISION_DTYPES.values() else "float32"
        return getattr(torch, name)
    if dtype not in PRECISION_DTYPES:
        raise AdaptoolError(
            f"--dtype must be one of {', '.join(PRECISION_DTYPES)} or auto, not {dtype!r}."
        )
    return getattr(torch, PRECISION_DTYPES[dtype])


def _load_adapter(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(folder / ADAPTER_WEIGHTS))
    except Exception as exc:
        raise AdapterError(
            f"{folder / ADAPTER_WEIGHTS} is not readable safetensors: {type(exc).__name__}: {exc}"
        ) from None


PEFT_PREFIX = "base_model.model."
ADAPTER_PARTS = ("lora_", "ia3_", "hada_", "lokr_", "oft_", "boft_", "vera_", "fourierft_")


def _group_by_module(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``base_model.model.<module>.<adapter param>`` -> {module: {adapter param: tensor}}."""
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        path = key.removeprefix(PEFT_PREFIX).split(".")
        cut = next((i for i, p in enumerate(path) if p.startswith(ADAPTER_PARTS)), None)
        if cut is None:
            raise AdapterError(
                f"the adapter holds {key}, which is not an adapter weight adaptool can fold: "
                f"trained biases (peft bias = 'all' or 'lora_only') and modules_to_save copies "
                f"are not supported by the streamed merge yet."
            )
        grouped.setdefault(".".join(path[:cut]), {})[".".join(path[cut:])] = value
    return grouped


def _base_shards(base_dir: Path) -> list[Path]:
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        files = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        return [base_dir / f for f in sorted(set(files))]
    single = base_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ModelError(f"{base_dir} holds no safetensors weights (adaptool reads no pickle files).")


def _tensor_names(shards: list[Path]) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for shard in shards:
        with safe_open(str(shard), framework="pt") as reader:
            names.update(reader.keys())
    return names


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


def _base_key(module: str, names: set[str]) -> str | None:
    """The checkpoint key of ``module``'s weight (checkpoints may drop the model prefix)."""
    parts = module.split(".")
    for start in range(len(parts)):
        key = ".".join(parts[start:]) + ".weight"
        if key in names:
            return key
    return None


def _fold(weight: Any, module_state: dict[str, Any], config: Any, module: str) -> Any:
    """Merge one adapted linear layer with peft's own layer code; returns the new weight
    (the bias is never changed by a weight merge, so the layer is built without it)."""
    import torch
    from peft import inject_adapter_in_model
    from torch import nn

    holder = nn.Module()
    holder.m = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        holder.m.weight.copy_(weight)
    single = copy.deepcopy(config)
    single.target_modules = ["m"]
    if hasattr(single, "layers_to_transform"):
        single.layers_to_transform = single.layers_pattern = None
    for attr in ("rank_pattern", "alpha_pattern"):
        if hasattr(single, attr):
            setattr(single, attr, {})
    _apply_patterns(single, config, module)
    if getattr(single, "feedforward_modules", None) is not None:
        ff = config.feedforward_modules or []
        ff = [ff] if isinstance(ff, str) else ff
        single.feedforward_modules = ["m"] if any(module.endswith(f) for f in ff) else []
    holder = inject_adapter_in_model(single, holder)
    expected = holder.state_dict()
    loaded = {}
    for key, value in module_state.items():
        parts = key.split(".")
        candidates = [
            ".".join(["m", *parts[:i], "default", *parts[i:]]) for i in range(1, len(parts) + 1)
        ]
        candidates.append(".".join(["m", *parts, "default", "weight"]))
        hit = next((c for c in candidates if c in expected), None)
        if hit is None or expected[hit].shape != value.shape:
            raise AdapterError(
                f"the adapter's {module}.{key} {tuple(value.shape)} does not fit the base layer "
                f"{tuple(weight.shape)}: the adapter was trained on another model; pass --base."
            )
        loaded[hit] = value.float()
    holder.load_state_dict(loaded, strict=False)
    holder.m.merge()
    return holder.m.get_base_layer().weight.detach()


def _apply_patterns(single: Any, config: Any, module: str) -> None:
    """Per-layer rank/alpha overrides (``rank_pattern``/``alpha_pattern``), matched by peft's
    own rule."""
    from peft.utils.other import get_pattern_key

    for attr, target in (("rank_pattern", "r"), ("alpha_pattern", "lora_alpha")):
        pattern = getattr(config, attr, None) or {}
        if pattern:
            key = get_pattern_key(list(pattern), module)
            if key in pattern:
                setattr(single, target, pattern[key])


def _copy_side_files(
    base_dir: Path, adapter: Path, tmp: Path, config: dict[str, Any], out_dtype: Any
) -> None:
    config = dict(config)
    config["dtype"] = str(out_dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    config.pop("quantization_config", None)
    config["use_cache"] = True
    write_json(tmp / "config.json", config)
    if (base_dir / "generation_config.json").is_file():
        shutil.copy2(base_dir / "generation_config.json", tmp / "generation_config.json")
    source = adapter if (adapter / "tokenizer_config.json").is_file() else base_dir
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)


# -- verification -------------------------------------------------------------------------------


def verify_merge(
    adapter: Path,
    merged: Path,
    result: MergeResult,
    *,
    base_dir: Path,
    quantizer: Any,
    load_dtype: Any,
    registry: Registry | None = None,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """Run the merged model and the adapter unmerged on a few prompts and compare logits
    (max |Δ| and mean KL per token).

    - ``reference``: the adapter on the very weights it was folded into (the base as trained
      for ``dequantized``, the original weights for ``original``), in fp32. A merge is correct
      when these agree to what the output dtype explains; above that it fails and nothing is
      written.
    - ``as_trained``: the adapter on the base loaded as in training (bitsandbytes layers and
      their compute). Reported always; for an unquantized adapter it is the same model as the
      reference. For ``original`` it measures how far the merged model is from what was trained.
    """

    from adaptool.adapter import open_target

    trained = open_target(adapter, registry=registry)
    tok = trained.tokenizer
    texts = prompts or _verification_prompts(trained)
    special = not (trained.formatter is not None and trained.formatter.prompt_has_special_tokens)
    batches = [
        tok(t, add_special_tokens=special, return_tensors="pt")["input_ids"][:, :256] for t in texts
    ]
    merged_logits = _logits(_load_merged(merged), batches)
    as_trained = _logits(trained.model, batches)
    del trained
    reference = _logits(
        _reference_model(
            adapter,
            base_dir,
            quantizer,
            load_dtype,
            dequantize=quantizer.quantized and result.into == "dequantized",
        ),
        batches,
    )
    key = {v: k for k, v in PRECISION_DTYPES.items()}[result.dtype]
    report = {
        "prompts": len(texts),
        "tolerance": TOLERANCE[key],
        "reference": _compare(merged_logits, reference),
        "as_trained": _compare(merged_logits, as_trained),
    }
    delta = report["reference"]["max_abs_logit_diff"]
    if delta > report["tolerance"]:
        raise MergeVerificationError(
            f"the merged model differs from the adapter it was made from by {delta:.3g} in the "
            f"logits (tolerance {report['tolerance']:g} for {result.dtype}): the merge is "
            f"wrong; nothing was written."
        )
    return report


def _logits(model: Any, batches: list[Any]) -> list[Any]:
    """fp32 logits on the CPU for each batch, run on the model's own device."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(input_ids=ids.to(device)).logits.float().cpu() for ids in batches]


def _compare(a: list[Any], b: list[Any]) -> dict[str, float]:
    import torch

    delta, kl, tokens = 0.0, 0.0, 0
    for x, y in zip(a, b, strict=True):
        delta = max(delta, (x - y).abs().max().item())
        kl += torch.nn.functional.kl_div(
            x.log_softmax(-1), y.log_softmax(-1), log_target=True, reduction="sum"
        ).item()
        tokens += x.shape[1]
    return {"max_abs_logit_diff": delta, "mean_kl": kl / max(tokens, 1)}


def _reference_model(
    adapter: Path, base_dir: Path, quantizer: Any, load_dtype: Any, *, dequantize: bool
) -> Any:
    """The adapter, unmerged, on the weights it is folded into, computed in fp32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch.float32, use_safetensors=True
    )
    if dequantize:
        layers = quantizer.quantized_layers(model)
        with torch.no_grad():
            for name, module in model.named_modules():
                if name in layers:
                    module.weight.copy_(quantizer.round_trip(module.weight, dtype=load_dtype))
    return PeftModel.from_pretrained(model, str(adapter)).eval()


def _load_merged(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    from adaptool.modeling import quiet_libraries

    quiet_libraries()
    return AutoModelForCausalLM.from_pretrained(
        str(folder), dtype="auto", use_safetensors=True
    ).eval()


def _verification_prompts(trained: Any) -> list[str]:
    """A few prompts from the adapter's own training data (formatted as trained), else fixed
    sentences."""
    rows: list[Any] = []
    recipe = trained.path / "recipe.toml"
    if trained.formatter is not None and recipe.is_file():
        try:
            from adaptool.data import load_rows
            from adaptool.recipe import load_recipe

            data = load_rows(load_recipe(recipe).data)
            rows = [data[i] for i in range(min(4, len(data)))]
        except AdaptoolError:
            rows = []
    if rows:
        out = []
        for row in rows:
            example = trained.formatter.format(row, trained.tokenizer)
            out.append(example.prompt + example.completion)
        return out
    return [
        "The quick brown fox jumps over the lazy dog.",
        "“Knowledge is power.” ->: ['knowledge', 'power']",
        "Once upon a time, there was a small library by the sea.",
    ]


def _manifest(
    folder: Path, adapter_manifest: dict | None, base_dir: Path, config: Any, result: MergeResult
) -> dict[str, Any]:
    return {
        "format": 1,
        "kind": "merged",
        "created": now(),
        "base_model": {
            "name": str(base_dir),
            **{
                k: v
                for k, v in ((adapter_manifest or {}).get("base_model") or {}).items()
                if k != "name"
            },
        },
        "adapter": {
            "path": str(folder),
            "peft_type": str(config.peft_type),
            "manifest": adapter_manifest,
        },
        "formatter": (adapter_manifest or {}).get("formatter"),
        "merge": {
            "dtype": result.dtype,
            "into": result.into,
            "trained_quantization": result.quantization,
            "merged_modules": result.merged_modules,
            "shards": result.shards,
            "seconds": result.seconds,
        },
        "verification": result.verification,
        "libraries": library_versions(),
    }
