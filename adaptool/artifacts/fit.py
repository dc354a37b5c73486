"""Does an adapter fit a base? Checked without loading any weights: the base's config is read
(one small file from the Hub for a Hub id), the model is built on the meta device, the adapter's
method is injected into it, and every saved tensor's name and shape must be one the method
creates there."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from adaptool.artifacts.method import recorded_method
from adaptool.base import peft_type_name
from adaptool.errors import AdapterError, describe, param
from adaptool.merging.streaming import read_layout
from adaptool.modeling import quiet_libraries


@dataclass
class Fit:
    """An adapter checked against its base: which base, which method, how many weights."""

    base: str
    method: str
    tensors: int


def check_fits(artifact: Artifact, *, base: str | None = None) -> Fit:
    """Check that the adapter ``artifact`` fits its base (``base``, else the one it records)."""
    quiet_libraries()  # before peft imports bitsandbytes, which logs on import
    from peft import PeftConfig
    from transformers import AutoConfig

    folder = artifact.path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's notes on renamed base paths
            config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise AdapterError(
            f"{folder / ADAPTER_CONFIG} is not a config peft can use: {describe(exc)}."
        ) from None
    method = recorded_method(artifact)
    try:
        saved = {e.name: tuple(e.shape) for e in read_layout(folder / ADAPTER_WEIGHTS)}
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{folder / ADAPTER_WEIGHTS} is unreadable: {exc}.") from None
    name = artifact.base_name(base)
    try:
        base_config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except Exception as exc:
        how = (
            "the folder has no readable config.json"
            if Path(name).exists()
            else ("it is neither a local folder nor a Hub model that could be reached")
        )
        raise AdapterError(
            f"the base model '{name}' that {folder.name} adapts cannot be resolved: {how} "
            f"({describe(exc)}). Pass {param('base')} with a local copy of the base (or its Hub "
            f"id)."
        ) from None
    if getattr(config, "init_lora_weights", True) not in (True, False):
        config.init_lora_weights = True  # PiSSA/OLoRA-style inits need real weights
    config.inference_mode = True
    try:
        wrapped, base_shapes = wrap_on_meta(base_config, config)
        expected = method.saved_shapes(wrapped)
    except Exception as exc:
        raise AdapterError(
            f"{folder.name} does not fit the base '{name}': {describe(exc)}. Pass "
            f"{param('base')} with the model it was trained on."
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
            f"{param('base')} with the model it was trained on."
        )
    method = peft_type_name(config.peft_type).lower()
    return Fit(base=str(name), method=method, tensors=len(saved))


def trainable_parameters(base_config: Any, peft_config: Any) -> int:
    """How many parameters ``peft_config`` adds to a model of ``base_config``, counted on the
    meta device (nothing allocated): what a recipe will cost before any memory is spent."""
    import copy

    wrapped, _ = wrap_on_meta(base_config, copy.deepcopy(peft_config))
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def wrap_on_meta(base_config: Any, peft_config: Any) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """A model of ``base_config`` built on the meta device (nothing allocated) and wrapped by
    peft with ``peft_config``; and the base's own tensor shapes (as peft names them). A method
    whose layers cannot be built on the meta device (BOFT computes its permutations with real
    numbers) gets its adapter tensors built for real, on a base that stays on meta."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(base_config)
        shapes = {f"base_model.model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
        try:
            with torch.device("meta"):
                return get_peft_model(model, peft_config), shapes
        except (NotImplementedError, RuntimeError) as exc:
            if "meta" not in str(exc):
                raise
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(base_config)
        return get_peft_model(model, peft_config), shapes
