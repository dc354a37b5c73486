"""Opening what adaptool made (or plain peft made): an adapter dir or a merged model dir,
with the base loaded the way the adapter was trained unless told otherwise."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool.errors import AdapterError, PluginError, describe
from adaptool.manifest import read_manifest
from adaptool.modeling import load_base, load_tokenizer

if TYPE_CHECKING:
    from adaptool.base import Formatter, Quantizer
    from adaptool.registry import Registry

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = ("adapter_model.bin", "pytorch_model.bin")


def check_adapter_dir(folder: Path) -> Path:
    """A folder holding a parseable adapter config and safetensors weights (pickle refused)."""
    if not folder.is_dir():
        raise AdapterError(f"{folder} is not a directory holding an adapter.")
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        raise AdapterError(f"{folder} has no {ADAPTER_CONFIG}: it is not a peft adapter.")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "peft_type" not in data:
            raise ValueError("no peft_type")
    except ValueError as exc:
        raise AdapterError(f"{config} is not a valid peft adapter config ({exc}).") from None
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickled = [n for n in PICKLE_WEIGHTS if (folder / n).is_file()]
        if pickled:
            raise AdapterError(
                f"{folder} holds only pickle weights ({pickled[0]}); adaptool loads safetensors "
                f"only, since unpickling can run arbitrary code. Convert them with peft where you "
                f"trust the source, then try again."
            )
        raise AdapterError(f"{folder} has no {ADAPTER_WEIGHTS}.")
    return folder


@dataclass
class Fit:
    """An adapter checked against its base: which base, which method, how many weights."""

    base: str
    method: str
    tensors: int


def check_fits(folder: Path, *, base: str | None = None, token: str | None = None) -> Fit:
    """Check that the adapter in ``folder`` fits its base (``base``, else the one its manifest or
    config names) without loading any weights: the base's config is read (one small file from
    the Hub for a Hub id), the model is built on the meta device, the adapter's method is
    injected into it, and every saved tensor's name and shape must be one the method creates
    there."""
    from adaptool.modeling import quiet_libraries
    from adaptool.streaming import read_layout

    quiet_libraries()  # before peft imports bitsandbytes, which logs on import
    import torch
    from peft import PeftConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's notes on renamed base paths
            config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise AdapterError(
            f"{folder / ADAPTER_CONFIG} is not a config peft can use: {describe(exc)}."
        ) from None
    try:
        saved = {e.name: tuple(e.shape) for e in read_layout(folder / ADAPTER_WEIGHTS)}
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{folder / ADAPTER_WEIGHTS} is unreadable: {exc}.") from None
    manifest = read_manifest(folder) or {}
    recorded = (manifest.get("base_model") or {}).get("name")
    name = base or recorded or config.base_model_name_or_path
    if not name:
        raise AdapterError(f"{folder} does not say which base model it adapts; pass --base PATH.")
    try:
        base_config = AutoConfig.from_pretrained(name, token=token, trust_remote_code=False)
    except Exception as exc:
        how = (
            "the folder has no readable config.json"
            if Path(name).exists()
            else ("it is neither a local folder nor a Hub model that could be reached")
        )
        raise AdapterError(
            f"the base model '{name}' that {folder.name} adapts cannot be resolved: {how} "
            f"({describe(exc)}). Pass --base with a local copy of the base (or its Hub id)."
        ) from None
    if getattr(config, "init_lora_weights", True) not in (True, False):
        config.init_lora_weights = True  # PiSSA/OLoRA-style inits need real weights
    config.inference_mode = True
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_config(base_config)
            base_shapes = {
                f"base_model.model.{k}": tuple(v.shape) for k, v in model.state_dict().items()
            }
            wrapped = get_peft_model(model, config)
        expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(wrapped).items()}
    except Exception as exc:
        raise AdapterError(
            f"{folder.name} does not fit the base '{name}': {describe(exc)}. Pass --base with "
            f"the model it was trained on."
        ) from None
    # peft may also save base layers it resized or trained whole (embeddings): those must
    # match the base's own shapes
    expected |= {k: base_shapes[k] for k in saved.keys() - expected.keys() if k in base_shapes}
    unknown = sorted(set(saved) - set(expected))
    missing = sorted(k for k in set(expected) - set(saved) if k not in base_shapes)
    wrong = sorted(k for k in saved.keys() & expected.keys() if saved[k] != expected[k])
    if unknown or wrong or missing:
        detail = [f"{k} has shape {saved[k]}, the base needs {expected[k]}" for k in wrong[:2]]
        detail += [f"{k} has no place in it" for k in unknown[:2]]
        detail += [f"{k} is missing" for k in missing[:2]]
        raise AdapterError(
            f"{folder.name} does not fit the base '{name}' ({len(wrong) + len(unknown)} of its "
            f"{len(saved)} tensors wrong, {len(missing)} missing: {'; '.join(detail)}). Pass "
            f"--base with the model it was trained on."
        )
    method = str(getattr(config.peft_type, "value", config.peft_type)).lower()
    return Fit(base=str(name), method=method, tensors=len(saved))


@dataclass
class Target:
    """An opened adapter or merged model, ready to generate."""

    path: Path
    kind: str  # "adapter" | "merged"
    model: Any
    tokenizer: Any
    formatter: Formatter | None
    manifest: dict[str, Any] | None
    base_name: str
    quantization: str
    #: why the manifest's formatter could not be loaded (then prompts can only be raw)
    formatter_error: Exception | None = None


def _plugin(registry: Registry | None, kind: str, name: str, options: dict[str, Any]) -> Any:
    if registry is None:
        from adaptool.plugins import get_plugins

        registry = get_plugins().registry
    cls = registry.get(kind, name)
    known = {k: v for k, v in options.items() if k in cls.Options.model_fields}
    return cls(cls.Options.model_validate(known))


def formatter_from_manifest(manifest: dict[str, Any] | None, registry: Registry | None = None):
    """The formatter an adapter was trained with (None when there is no manifest)."""
    if not manifest or not manifest.get("formatter"):
        return None
    spec = manifest["formatter"]
    return _plugin(registry, "formatter", spec["name"], spec.get("options") or {})


def quantizer_for(
    manifest: dict[str, Any] | None, override: str | None, registry: Registry | None = None
) -> Quantizer:
    """``--quantization`` if given, else the quantization the adapter was trained with."""
    if override is not None:
        return _plugin(registry, "quantizer", override, {})
    spec = (manifest or {}).get("quantization") or {"backend": "none"}
    return _plugin(registry, "quantizer", spec["backend"], spec)


def open_target(
    target: str | Path,
    *,
    base: str | None = None,
    quantization: str | None = None,
    registry: Registry | None = None,
    token: str | None = None,
) -> Target:
    """Load an adapter dir (its base resolved from the manifest or adapter config, ``base``
    overriding where it lives) or a merged model dir, in eval mode."""
    from adaptool.hub import locate
    from adaptool.recipe import ModelSection

    located = locate(target, token=token)
    folder = located.path
    base = base or located.base
    if not folder.is_dir():
        raise AdapterError(
            f"{target} is not a directory; give an adapter dir written by `adaptool train` or "
            f"peft, or a merged model dir."
        )
    manifest = read_manifest(folder)
    try:
        formatter = formatter_from_manifest(manifest, registry)
    except PluginError as exc:  # not installed here: raw prompts still work
        formatter, formatter_error = None, exc
    else:
        formatter_error = None
    if (folder / ADAPTER_CONFIG).is_file():
        check_adapter_dir(folder)
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        recorded = (manifest or {}).get("base_model") or {}
        base_name = base or recorded.get("name") or config.get("base_model_name_or_path")
        if not base_name:
            raise AdapterError(
                f"{folder} does not say which base model it adapts; pass --base PATH."
            )
        dtype = recorded.get("dtype", "auto") if not base else "auto"
        section = ModelSection(
            name=str(base_name),
            revision=None if base else recorded.get("revision"),
            dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "auto",
        )
        quantizer = quantizer_for(manifest, quantization, registry)
        tokenizer_source = section
        if (folder / "tokenizer_config.json").is_file():
            tokenizer_source = ModelSection(name=str(folder))
        tokenizer = load_tokenizer(tokenizer_source, token=token)
        model = load_base(section, quantizer, token=token)
        model = _attach(model, folder, base_name)
        kind = "adapter"
    elif (folder / "config.json").is_file():
        from adaptool.modeling import runtime_dtype

        quantizer = quantizer_for(None, quantization, registry)
        try:
            saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            dtype = runtime_dtype(saved.get("dtype") or saved.get("torch_dtype"))
        except (ValueError, AttributeError) as exc:
            raise AdapterError(
                f"{folder / 'config.json'} is not a readable config: {exc}"
            ) from None
        section = ModelSection(name=str(folder), dtype=dtype)
        tokenizer = load_tokenizer(section, token=token)
        model = load_base(section, quantizer, token=token)
        base_name = str(((manifest or {}).get("base_model") or {}).get("name", folder))
        kind = "merged"
    else:
        raise AdapterError(
            f"{folder} holds neither an adapter ({ADAPTER_CONFIG}) nor a model (config.json)."
        )
    model.eval()
    model.config.use_cache = True
    return Target(
        folder,
        kind,
        model,
        tokenizer,
        formatter,
        manifest,
        str(base_name),
        quantizer.name,
        formatter_error,
    )


def _attach(model: Any, folder: Path, base_name: str) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as exc:
        raise AdapterError(
            f"the adapter {folder} does not fit the base {base_name}: {describe(exc)}. "
            f"Pass --base with the model it was trained on."
        ) from None
