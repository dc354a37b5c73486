"""FSDP (``distributed.strategy = "fsdp"``): the wrapped model sharded across the processes
by accelerate's own FSDP2 code (each transformer block, the embeddings and the head become
units whose parameters are split between the processes and gathered for their forward).

The frozen base stays sharded for the whole run. The trainable part — the adapter and its
optimizer state, small — is gathered whole on every process where it leaves the run (a
checkpoint, the output adapter): while it is whole the model reads like an unsharded peft
model, so the PEFT method's own save (and peft's) works unchanged. A resumed run loads its
checkpoint's adapter before the model is split, and the optimizer state is split as it
loads. Everything here is a no-op on a model that is
not sharded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adaptool.recipe.resolve import RecipePlugins
    from adaptool.recipe.schema import DistributedSection

#: distributed.auto_wrap -> accelerate's auto-wrap policy name
AUTO_WRAP = {"transformer": "transformer_based_wrap", "size": "size_based_wrap"}


def plugin(section: DistributedSection, *, gpu: bool) -> Any:
    """accelerate's FSDP plugin for the recipe's ``[distributed]`` section (FSDP2)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy=AUTO_WRAP[section.auto_wrap],
        min_num_params=section.min_num_params,
        cpu_offload=section.cpu_offload and gpu,
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
        # the bases of adaptool's runs load on every process (a quantized one must)
        cpu_ram_efficient_loading=False,
    )


def shard(accelerator: Any, model: Any) -> Any:
    """``model`` (peft-wrapped, trainable parameters set) sharded in place by accelerate's
    FSDP2 preparation; the optimizer is built on it afterwards."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    return fsdp2_prepare_model(accelerator, model)


def refusals(plugins: RecipePlugins, model: Any = None) -> list[str]:
    """What a sharded run cannot do with this recipe, each with its reason (``model``: the
    wrapped model, whose peft config says whether modules are dropped at random)."""
    from adaptool.base import PeftMethod

    found = []
    method: PeftMethod = plugins.method
    kind = type(method)
    if (
        kind.after_optimizer_step is not PeftMethod.after_optimizer_step
        or kind.loss_term is not PeftMethod.loss_term
    ):
        found.append(
            f'peft.method = "{method.name}" works on whole weights after every step (rank '
            f"allocation, a regulariser), which FSDP holds split between the processes"
        )
    config = model.peft_config.get("default") if model is not None else None
    if getattr(config, "module_dropout", 0):
        found.append(
            "module_dropout > 0 skips adapter modules at random, a different set on each "
            "process, and FSDP needs every process to reduce the same gradients"
        )
    for callback in plugins.callbacks:
        # a metric other than the evaluation loss is scored on generations
        if getattr(callback, "key", "eval_loss") != "eval_loss":
            found.append(
                f'callbacks.{callback.name}.metric = "{callback.options.metric}" generates '
                f"on the main process alone, which a model split between the processes "
                f'cannot do (use metric = "eval_loss")'
            )
    return found


def _sharded_parameters(model: Any) -> Iterator[tuple[Any, str, Any]]:
    """(module, name, parameter) for each trainable parameter FSDP holds split, in the
    module order every process shares."""
    from torch.distributed.tensor import DTensor

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.requires_grad and isinstance(param, DTensor):
                yield module, name, param


def _reshard(model: Any) -> None:
    """Every unit back to its shards: FSDP leaves some gathered after a forward without a
    backward (an evaluation), and reading the model's state would reshard them on one
    process only, out of step with the others."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def held_by_this_process(model: Any) -> tuple[int, int]:
    """(elements this process holds, elements of the whole model) over its parameters as
    stored (a 4-bit weight counts its packed container)."""
    from torch.distributed.tensor import DTensor

    held = total = 0
    for param in model.parameters():
        total += param.numel()
        held += param.to_local().numel() if isinstance(param, DTensor) else param.numel()
    return held, total


def is_sharded(model: Any) -> bool:
    return next(_sharded_parameters(model), None) is not None


@contextmanager
def whole_adapter(model: Any) -> Iterator[None]:
    """Within the block the trainable parameters are whole tensors on every process (a
    collective: every process enters it, in the same order), to be read: saved by the main
    process."""
    import torch

    _reshard(model)
    swapped, whole = [], {}
    for module, name, param in _sharded_parameters(model):
        if id(param) not in whole:  # a parameter two modules share stays one
            whole[id(param)] = torch.nn.Parameter(param.full_tensor(), requires_grad=True)
        module._parameters[name] = whole[id(param)]
        swapped.append((module, name, param))
    try:
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def whole_optimizer_state(optimizer: Any) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered whole (a collective):
    what one process would have saved."""
    from torch.distributed.tensor import DTensor

    saved = optimizer.state_dict()
    for index in sorted(saved["state"]):
        # a copy: the state dict shares the optimizer's own per-parameter dicts
        values = saved["state"][index] = dict(saved["state"][index])
        for key in sorted(values):
            if isinstance(values[key], DTensor):
                values[key] = values[key].full_tensor()
    return saved


def load_optimizer_state(optimizer: Any, saved: dict[str, Any]) -> None:
    """Load a whole optimizer state (as :func:`whole_optimizer_state` gives it) into an
    optimizer over sharded parameters: each process keeps its shard of every tensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, values in saved["state"].items():
        param = params[int(index)]
        state[index] = values = dict(values)  # the caller's dict stays whole
        if not isinstance(param, DTensor):
            continue
        for key, value in values.items():
            if getattr(value, "shape", None) == param.shape:
                values[key] = distribute_tensor(
                    value.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None
                )
    optimizer.load_state_dict({**saved, "state": state})
