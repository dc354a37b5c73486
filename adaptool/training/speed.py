"""How a run goes fast on the machine it runs on, decided once at setup: micro-batches as large
as memory allows (gradient accumulation is a memory device, not part of the step), the loss
taken on the LM head in chunks, and the model's slow activations swapped for fused ones.
Each is exact: the optimizer step is the same, only its speed and memory change."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from adaptool.training.progress import Reporter

#: the share of the memory free at setup that one micro-batch's activations may take
ACTIVATION_SHARE = 0.25

#: entries in each of the CPU's two caches of matmul kernels (oneDNN's primitive cache and
#: ideep's in front of it), a kernel for each shape, about 1 MB each. Their default, 1024 each,
#: grows by hundreds of MB once micro-batches take a shape per length (+450 MB peak on the 100M
#: benchmark model). 16 held a BLOOM micro-batch's kernels (LoRA on query_key_value): the
#: same speed as 1024 within the noise, 1109 MB peak instead of 1563 on the 100M model; 64
#: measured +60 MB on the 20M model and +100 MB on the 8-bit one; 8 was 10 % slower; 0
#: crashes oneDNN. An LRU cache smaller than the kernels a micro-batch cycles through misses
#: on every one: models with many distinct adapted shapes may want a larger one (the
#: environment variables below win)
KERNEL_CACHE_ENTRIES = 16


def limit_kernel_caches() -> None:
    """Bound the CPU matmul kernel caches (:data:`KERNEL_CACHE_ENTRIES`) unless the user set
    them: both read their size from the environment when the process first runs a bf16 matmul,
    so this takes effect for a process that trains first (the CLI, a launched worker)."""
    import os

    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, str(KERNEL_CACHE_ENTRIES))


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
    # under gradient checkpointing autograd keeps each block's input only, but the backward
    # recomputes one block at a time, keeping all of that block's activations meanwhile
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", None) is True]
    if flagged:
        # the innermost flagged modules are the blocks (a model may flag itself too)
        inner = {id(m) for m in flagged}
        blocks = [m for m in flagged if not any(id(c) in inner for c in list(m.modules())[1:])]
        for m in flagged:
            m.gradient_checkpointing = False
        try:
            whole = activation_bytes_per_token(model, probe(), head=head)
        finally:
            for m in flagged:
                m.gradient_checkpointing = True
        per_token += whole / len(blocks)
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


#: ``training.compile = "auto"`` tries a run that would train longer than this eager (s):
#: the blocks compile in seconds from the cache, a minute or so from scratch
COMPILE_PAYS_AFTER = 600.0
#: ... and keeps it compiled where that measured at least this much faster than eager
COMPILE_MIN_GAIN = 1.05


@dataclass
class Compiled:
    """What ``training.compile`` did: the blocks compiled and how long the first compiled
    step took (the compile, from scratch or from the cache), or why it did not compile."""

    blocks: int = 0
    seconds: float | None = None
    #: compiled speed / eager speed, measured on the same micro-batch at setup
    gain: float | None = None
    reason: str | None = None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def inductor_cache() -> Path:
    """Where compiled kernels are kept between runs: ``TORCHINDUCTOR_CACHE_DIR`` when the
    user set it, else adaptool's cache folder (not torch's default in /tmp, which a reboot
    clears): a later run of a model compiles from it in seconds."""
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return Path(chosen)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "adaptool" / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def cannot_compile(model: Any, *, sharded: bool) -> str | None:
    """Why torch.compile cannot run here (None: it can)."""
    import shutil

    import torch

    if sharded:
        return "FSDP-sharded models are trained eager"
    if not _blocks(model):
        return "the model names no repeated block to compile (_no_split_modules)"
    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401
        except ImportError:
            return "compiling for a GPU needs triton (pip install triton)"
    elif not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "compiling for the CPU needs a C++ compiler (g++ or clang++) on the PATH"
    return None


def _blocks(model: Any) -> list[Any]:
    """The model's repeated transformer blocks (its ``_no_split_modules`` classes)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in kinds]


def _synchronize() -> None:
    """A GPU's queued work done (timers read the host's clock)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds_per_token(
    model: Any, batch: dict[str, Any], *, head: Any, runs: int = 2, backward: bool = True
) -> float:
    """A training micro-batch timed, per token: forward and backward (``backward=False``:
    the forward alone, its graph dropped unused); the last of ``runs`` (the first creates
    the kernels' per-shape state, or compiles). Gradients are cleared after, and the
    generators left as they were."""
    import time

    import torch

    from adaptool.training.loss import loss_sum

    seconds = 0.0
    with torch.random.fork_rng():
        for _ in range(runs):
            _synchronize()
            started = time.perf_counter()
            loss = loss_sum(model, batch, head=head)
            if backward:
                loss.backward()
            _synchronize()
            seconds = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return seconds / batch["input_ids"].numel()


def compile_blocks(
    setting: bool | str,
    model: Any,
    probe: Callable[[], dict[str, Any]],
    *,
    head: Any,
    sharded: bool,
    run_tokens: float,
    reporter: Reporter,
) -> Compiled:
    """``training.compile``: each repeated block compiled by torch.compile (regional
    compilation: the blocks share one compiled graph; dynamic shapes, so batches of every
    length reuse it), warmed on the micro-batch ``probe()`` — the time that took reported —
    and timed against eager on it. ``auto``: tried where the compiler is there and the run
    (``run_tokens`` tokens a process) would train longer than :data:`COMPILE_PAYS_AFTER`
    seconds eager, kept where it measured :data:`COMPILE_MIN_GAIN` times eager's speed or
    more. ``True`` and it cannot: a ModelError naming why."""
    import time

    from adaptool.distributed import from_main
    from adaptool.errors import ModelError, describe

    if setting is False:
        return Compiled(reason="training.compile = false")
    why = cannot_compile(model, sharded=sharded)
    if why is not None and setting is True:
        raise ModelError(f"training.compile = true, but {why}. Set training.compile = false.")
    if why is not None:
        return Compiled(reason=why)
    batch = probe()
    if setting == "auto":  # a training forward and twice its time for the backward
        forward = seconds_per_token(model, batch, head=head, runs=1, backward=False)
        estimate = 3 * forward * run_tokens
        # every process decides as the main one did (they run the same model alike)
        estimate = from_main(estimate)
        if estimate < COMPILE_PAYS_AFTER:
            return Compiled(reason=f"the run would train for about {estimate:.0f} s eager")
    eager = seconds_per_token(model, batch, head=head)
    cache = inductor_cache()
    blocks = _blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    started = time.perf_counter()
    try:
        compiled = seconds_per_token(model, batch, head=head, runs=3)
    except Exception as exc:  # the compiler's own failure: eager is always there
        _uncompile(model, blocks)
        if setting is True:
            raise ModelError(
                f"training.compile = true, but torch.compile failed on this model: "
                f"{describe(exc)}. Set training.compile = false."
            ) from None
        reporter.info(f"compile: torch.compile failed ({describe(exc)}); training eager")
        return Compiled(reason=f"torch.compile failed: {describe(exc)}")
    seconds = round(time.perf_counter() - started, 2)
    gain = from_main(eager / compiled)
    if setting == "auto" and gain < COMPILE_MIN_GAIN:
        _uncompile(model, blocks)
        reporter.info(
            f"compile: compiled in {seconds:.1f} s but only {gain:.2f}x eager's speed here; "
            f"training eager"
        )
        return Compiled(seconds=seconds, gain=round(gain, 3), reason="not faster than eager")
    reporter.info(
        f"compile: {len(blocks)} blocks compiled by torch.compile in {seconds:.1f} s, "
        f"{gain:.2f}x eager's speed (kernels cached in {cache})"
    )
    return Compiled(blocks=len(blocks), seconds=seconds, gain=round(gain, 3))


def _uncompile(model: Any, blocks: list[Any]) -> None:
    for block in blocks:
        block._compiled_call_impl = None
    model.zero_grad(set_to_none=True)


def half_precision_lora(model: Any) -> int:
    """LoRA layers over a bf16 (or fp16) base compute their low-rank path in the base's
    dtype, as autocast does on a GPU: the adapter's fp32 weights (the optimizer's master
    copy, updated in fp32) are cast for the matmuls, instead of every input being cast up to
    fp32 and every output back down — two passes over each adapted layer's widest tensors,
    forward and backward, and fp32 matmuls at half the bf16 rate. The update is added by the
    same matmul (``addmm``) that computes it. Layers doing anything else (several active
    adapters, DoRA, a LoRA bias, a mixed batch, merged weights) take peft's own forward.
    The number of layers switched."""
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is not LoraLinear or type(module.base_layer) is not torch.nn.Linear:
            continue
        if module.base_layer.weight.dtype not in (torch.bfloat16, torch.float16):
            continue
        module.forward = _half_lora_forward.__get__(module)
        count += 1
    return count


def _half_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch
    import torch.nn.functional as F

    names = self.active_adapters
    name = names[0] if len(names) == 1 else None
    if (
        args
        or kwargs
        or name is None
        or self.disable_adapters
        or self.merged
        or name not in self.lora_A
        or name in self.lora_variant
        or self.lora_bias.get(name)
    ):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    dtype = result.dtype
    dropped = _dropout(self.lora_dropout[name], x.to(dtype))
    low = F.linear(dropped, self.lora_A[name].weight.to(dtype))
    update = self.lora_B[name].weight.to(dtype).t()
    flat = torch.addmm(
        result.reshape(-1, result.shape[-1]),
        low.reshape(-1, low.shape[-1]),
        update,
        alpha=self.scaling[name],
    )
    return flat.reshape(result.shape)


#: a CPU dropout mask compares 16 random bits an element with the drop probability, rounded
#: to a multiple of 2^-16 (0.05 -> 0.0500030518)
MASK_BITS = 16


def _dropout(module: Any, x: Any) -> Any:
    """``module`` (LoRA's ``nn.Dropout``, or an ``Identity``) applied to ``x``. On a CPU a
    training dropout draws its mask 16 bits an element from 64-bit random integers, four
    elements a draw: torch's CPU ``bernoulli_`` draws a random number an element, 4 ns each
    here, 4 % of a 100M model's step; this mask costs 40 % of that. The drop probability is
    rounded to a multiple of 2^-16 and the kept elements scaled by its exact complement, so
    the output's expectation is still ``x``. The mask comes from torch's generator, seeded
    and checkpointed with it. Under torch.compile, torch's dropout (inductor generates its
    mask inside the fused kernel; dynamo cannot trace ``random_``)."""
    import torch

    p = getattr(module, "p", 0.0)
    if (
        not module.training
        or p == 0
        or x.device.type != "cpu"
        or not isinstance(module, torch.nn.Dropout)
        or torch.compiler.is_compiling()
    ):
        return module(x)
    span = 1 << MASK_BITS
    dropped = round(p * span)
    if dropped == 0 or dropped == span or module.inplace:
        return module(x)
    words = -(-x.numel() * MASK_BITS // 64)
    # every 64-bit value alike (from the smallest, no upper bound: the full range, no modulo)
    bits = torch.empty(words, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= dropped - span // 2
    return torch.where(keep, x * (span / (span - dropped)), 0)
