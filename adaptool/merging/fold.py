"""Folding one adapted layer into its base weight and bias with peft's own layer code, so every
method peft can merge is folded exactly as ``merge_and_unload`` would; and finding, for each adapted
module, its weights in the adapter file and in the base checkpoint."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from adaptool.errors import AdapterError, param

if TYPE_CHECKING:
    from adaptool.base import LayerToFold, PeftMethod

PEFT_PREFIX = "base_model.model."
SHARED_PREFIX = "base_model."


def group_by_module(
    state: dict[str, Any], method: PeftMethod
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """An adapter file's tensors as the method saved them:
    ``base_model.model.<module>.<part>`` -> ({module: {part: tensor}}, {shared name: tensor}),
    a part being a name that starts with one of the method's ``weight_parts`` and the shared
    tensors those named in its ``shared_weights`` (VeRA's projections)."""
    grouped: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for key, value in state.items():
        short = key.removeprefix(SHARED_PREFIX)
        if not key.startswith(PEFT_PREFIX) and short in method.shared_weights:
            shared[short] = value
            continue
        path = key.removeprefix(PEFT_PREFIX).split(".")
        parts = method.weight_parts
        cut = next((i for i, p in enumerate(path) if parts and p.startswith(parts)), None)
        if cut is None:
            raise AdapterError(
                f"the adapter holds {key}, which is not a {method.title()} weight adaptool "
                f"can fold: trained biases (peft bias = 'all' or 'lora_only') and "
                f"modules_to_save copies are not supported by the streamed merge yet."
            )
        grouped.setdefault(".".join(path[:cut]), {})[".".join(path[cut:])] = value
    return grouped, shared


def base_key(module: str, names: set[str]) -> str | None:
    """The checkpoint key of ``module``'s weight (checkpoints may drop the model prefix)."""
    parts = module.split(".")
    for start in range(len(parts)):
        key = ".".join(parts[start:]) + ".weight"
        if key in names:
            return key
    return None


def fold_with_peft(layer: LayerToFold) -> tuple[Any, Any]:
    """Merge one adapted linear layer with peft's own layer code, exactly as
    ``merge_and_unload`` merges it (what :meth:`PeftMethod.fold` does by default).

    A lone linear layer is built with the layer's weight and bias, the adapter's config is
    injected into it, its tensors loaded and merged by peft, and ``(new weight, new bias)``
    come back (float32; the bias None when there is none).

    The bias is merged too, since some methods change it: IA3 scales the output of the layers it
    adapts outside ``feedforward_modules``, bias included, and a LoRA trained with
    ``lora_bias=True`` adds its ``lora_B`` bias. Raises :class:`AdapterError` when the adapter's
    tensors do not fit the layer, or when the adapter has a bias to merge and the layer none.
    """
    import torch
    from peft import inject_adapter_in_model
    from torch import nn

    weight, bias, module_state, config, module = (
        layer.weight,
        layer.bias,
        layer.tensors,
        layer.config,
        layer.module,
    )
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
