"""Folding one adapted layer into its base weight and bias with peft's own layer code, so every
method peft can merge is folded exactly as ``merge_and_unload`` would; and finding, for each adapted
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


def fold(
    weight: Any, bias: Any, module_state: dict[str, Any], config: Any, module: str
) -> tuple[Any, Any]:
    """Merge one adapted linear layer with peft's own layer code, exactly as
    ``merge_and_unload`` merges it.

    ``weight`` (out, in) and ``bias`` (out,), or None where the layer has none, are the base
    layer's; ``module_state`` is the adapter's tensors for ``module`` (keyed as
    :func:`group_by_module` keys them) and ``config`` the adapter's peft config. A lone linear
    layer is built with this weight and bias, the adapter is injected into it and merged by
    peft, and ``(new weight, new bias)`` come back (float32; the bias None when there is none).

    The bias is merged too, since some methods change it: IA3 scales the output of the layers it
    adapts outside ``feedforward_modules``, bias included, and a LoRA trained with
    ``lora_bias=True`` adds its ``lora_B`` bias. Raises :class:`AdapterError` when the adapter's
    tensors do not fit the layer, or when the adapter has a bias to merge and the layer none.
    """
    import torch
    from peft import inject_adapter_in_model
    from torch import nn

    out_features, in_features = weight.shape
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"the bias of {module} {tuple(bias.shape)} does not fit its weight "
            f"{tuple(weight.shape)}"
        )
    holder = nn.Module()
    holder.m = torch.nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias is not None)
    with torch.no_grad():
        holder.m.weight.copy_(weight)
        if bias is not None:
            holder.m.bias.copy_(bias)
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
    if bias is None and getattr(single, "lora_bias", False):
        raise AdapterError(
            f"the adapter was trained with lora_bias=True, so it adds a bias to {module}, but the "
            f"base layer has no bias to fold it into: the adapter was trained on another model; "
            f"pass {param('base')}."
        )
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
                f"{tuple(weight.shape)}: the adapter was trained on another model; "
                f"pass {param('base')}."
            )
        loaded[hit] = value.float()
    holder.load_state_dict(loaded, strict=False)
    holder.m.merge()
    base = holder.m.get_base_layer()
    return base.weight.detach(), None if base.bias is None else base.bias.detach()


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
