"""Folding one adapted layer into its base weights with peft's own layer code, so every method
peft can merge is folded exactly as ``merge_and_unload`` would; and finding, for each adapted
module, its weights in the adapter file and in the base checkpoint."""

from __future__ import annotations

import copy
from typing import Any

from adaptool.errors import AdapterError, param

PEFT_PREFIX = "base_model.model."
ADAPTER_PARTS = ("lora_", "ia3_", "hada_", "lokr_", "oft_", "boft_", "vera_", "fourierft_")


def group_by_module(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
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


def base_key(module: str, names: set[str]) -> str | None:
    """The checkpoint key of ``module``'s weight (checkpoints may drop the model prefix)."""
    parts = module.split(".")
    for start in range(len(parts)):
        key = ".".join(parts[start:]) + ".weight"
        if key in names:
            return key
    return None


def fold(weight: Any, module_state: dict[str, Any], config: Any, module: str) -> Any:
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
    apply_patterns(single, config, module)
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
                f"{tuple(weight.shape)}: the adapter was trained on another model; pass {param('base')}."
            )
        loaded[hit] = value.float()
    holder.load_state_dict(loaded, strict=False)
    holder.m.merge()
    return holder.m.get_base_layer().weight.detach()


def apply_patterns(single: Any, config: Any, module: str) -> None:
    """Per-layer rank/alpha overrides (``rank_pattern``/``alpha_pattern``), matched by peft's
    own rule."""
    from peft.utils.other import get_pattern_key

    for attr, target in (("rank_pattern", "r"), ("alpha_pattern", "lora_alpha")):
        pattern = getattr(config, attr, None) or {}
        if pattern:
            key = get_pattern_key(list(pattern), module)
            if key in pattern:
                setattr(single, target, pattern[key])
