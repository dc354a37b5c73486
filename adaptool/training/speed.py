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
