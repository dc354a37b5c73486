"""How a run goes fast on the machine it runs on, decided once at setup: micro-batches as large
as memory allows (gradient accumulation is a memory device, not part of the step), the loss
taken on the LM head in chunks, and the model's slow activations swapped for fused ones.
Each is exact: the optimizer step is the same, only its speed and memory change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from adaptool.training.progress import Reporter

#: the share of the memory free at setup that one micro-batch's activations may take
ACTIVATION_SHARE = 0.25


def activation_bytes_per_token(model: Any, batch: dict[str, Any], *, head: Any = None) -> float:
    """What one training forward keeps for its backward, per token of ``batch``: measured by
    counting the tensors autograd saves (weights excluded), not estimated from the config."""
    import torch

    from adaptool.training.loss import loss_sum

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def count(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    with torch.random.fork_rng(), torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        loss = loss_sum(model, batch, head=head)
    del loss
    return sum(kept.values()) / batch["input_ids"].numel()


def micro_batch_tokens(
    setting: int | str,
    model: Any,
    probe: Callable[[], dict[str, Any]],
    *,
    head: Any,
    reporter: Reporter,
) -> int:
    """``training.micro_batch_tokens`` resolved: ``auto`` measures the activations of the
    micro-batch ``probe()`` and lets one micro-batch take :data:`ACTIVATION_SHARE` of the
    memory free now; 0 keeps the plan's micro-batches of ``batch_size`` rows (FSDP does,
    whose every forward is a collective the processes join in step)."""
    from adaptool.modeling import free_memory

    if setting != "auto":
        return int(setting)
    per_token = activation_bytes_per_token(model, probe(), head=head)
    budget = int(ACTIVATION_SHARE * free_memory() / max(per_token, 1.0))
    reporter.info(
        f"micro-batches: up to {budget:,} tokens each ({per_token / 1024:.0f} KiB of "
        f"activations a token, measured)"
    )
    return max(budget, 1)


#: activation modules written as several elementwise ops (each a pass over the MLP's widest
#: tensor, forward and backward) that compute the tanh approximation of GELU, which torch
#: has as one fused kernel
TANH_GELUS = ("BloomGelu", "NewGELUActivation", "FastGELUActivation")
#: how far a fused activation may be from the module it replaces (fp32, on [-8, 8])
ACTIVATION_TOLERANCE = 1e-5


def fuse_activations(model: Any) -> list[str]:
    """Swap the model's multi-op tanh-GELU modules (:data:`TANH_GELUS`) for torch's fused
    one, each kind checked first to compute the same values (within
    :data:`ACTIVATION_TOLERANCE`); the names of the kinds swapped."""
    import torch
    from transformers.activations import GELUTanh

    swapped: dict[str, bool] = {}
    for parent in model.modules():
        for name, child in parent.named_children():
            kind = type(child).__name__
            if kind not in TANH_GELUS:
                continue
            if kind not in swapped:
                x = torch.linspace(-8, 8, 4097)
                with torch.no_grad():
                    gap = (child(x) - GELUTanh()(x)).abs().max().item()
                swapped[kind] = gap <= ACTIVATION_TOLERANCE
            if swapped[kind]:
                setattr(parent, name, GELUTanh())
    return sorted(kind for kind, done in swapped.items() if done)
