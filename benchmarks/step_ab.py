"""One change to adaptool's training step, timed on and off in one process. This is the
measure of what the change does in the step: a profile charges each op its own time, and a
lone-tensor timing leaves out the memory traffic of everything around it.

adaptool's setup runs once, as for `train_speed.py`'s adaptool side (a BLOOM of --size,
LoRA r=16, 4 x 4 rows a step, every token trained). A step is the loop's: its micro-batches'
forward and backward, then the optimizer's step (without the loop's logging, clipping and
schedule, the same with the change on and off). Blocks of 5 optimizer steps then run
with the change off and on, both on the same batches, in alternating order, for --rounds
rounds (even: each side goes first as often). On the CPU, in bf16 (adaptool's precision
where the CPU computes bf16 natively; the script stops where it does not), eager (the changes
patch modules). The last line is `gain: <median time off / median time on>`: above 1, the change
makes the step faster. `--change none` times the same step on both sides, to show the noise.

    python benchmarks/step_ab.py --size 100m --change no-gelu
    python benchmarks/step_ab.py --list

Some changes are ceilings, not candidates: they take work out and change the model
(`no-gelu`, `no-attention`, `no-lora-dropout`), to show the most any faster version of that
work could gain.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import DATA, SIZES, build_base

#: 2·sqrt(2/π) and 0.044715 times it: GELU (tanh) is x·sigmoid(x·(C1 + C3·x²))
C1 = 1.5957691216057308
C3 = C1 * 0.044715


def _gelu_class() -> Any:
    """The class of the tanh GELUs in adaptool's model (it swaps BLOOM's in for these)."""
    from transformers.activations import GELUTanh

    return GELUTanh


def _set_gelu(forward: Any, on: bool) -> None:
    _swap(_gelu_class(), "forward", forward, on)


def no_gelu(model: Any, on: bool) -> None:
    """ceiling: the tanh GELUs return their input"""
    _set_gelu(lambda self, x: x, on)


_TABLES: dict[Any, Any] = {}


@functools.cache
def _table_gelu_function() -> Any:
    import torch
    import torch.nn.functional as F

    class TableGelu(torch.autograd.Function):
        index = torch.empty(0, dtype=torch.int32)

        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            if x.dtype not in _TABLES:
                values = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16).view(x.dtype)
                ones = torch.ones(values.shape)
                slope = torch.ops.aten.gelu_backward(ones, values.float(), approximate="tanh")
                _TABLES[x.dtype] = (F.gelu(values, approximate="tanh"), slope.to(x.dtype))
            activation, slope = _TABLES[x.dtype]
            if TableGelu.index.numel() < x.numel():  # kept: a fresh one costs page faults
                TableGelu.index = torch.empty(x.numel(), dtype=torch.int32)
            index = TableGelu.index[: x.numel()]
            index.view(x.shape).copy_(x.contiguous().view(torch.uint16))
            ctx.save_for_backward(slope.index_select(0, index).view(x.shape))
            return activation.index_select(0, index).view(x.shape)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (slope,) = ctx.saved_tensors
            return grad * slope

    return TableGelu


def gelu_table(model: Any, on: bool) -> None:
    """the GELU of every bf16 value looked up in a table (the same bits as torch's kernel),
    its derivative kept for the backward"""
    function = _table_gelu_function()
    _set_gelu(lambda self, x: function.apply(x), on)


_COMPILED: list[Any] = []


def compiled_gelu(model: Any, on: bool) -> None:
    """the GELU as x·sigmoid(...) compiled by inductor (compiled in the warm-up)"""
    import torch

    if not _COMPILED:
        gelu = torch.compile(lambda x: x * torch.sigmoid(x * (C1 + C3 * x * x)), dynamic=True)
        _COMPILED.append(gelu)
    _set_gelu(lambda self, x: _COMPILED[0](x), on)


def _swap(owner: Any, name: str, replacement: Any, on: bool) -> None:
    """``owner.name`` (a class's, a module's or an object's own attribute) set to
    ``replacement`` when on, to what it was before the first swap when off."""
    original = vars(owner).get(f"_ab_{name}") or getattr(owner, name)
    setattr(owner, f"_ab_{name}", original)
    setattr(owner, name, replacement if on else original)


def no_attention(model: Any, on: bool) -> None:
    """ceiling: BLOOM's attention scores, softmax and weighted sum taken out (q + k + v)"""
    from transformers.models.bloom.modeling_bloom import BloomAttention, dropout_add

    def forward(self, hidden_states, residual, alibi, attention_mask, *args, **kwargs):
        batch, length, _ = hidden_states.shape
        q, k, v = self._reshape(self.query_key_value(hidden_states))
        context = (q + k + v).transpose(1, 2).reshape(batch, length, -1)
        out = dropout_add(self.dense(context), residual, self.hidden_dropout, self.training)
        return out, None

    _swap(BloomAttention, "forward", forward, on)


def unbind_qkv(model: Any, on: bool) -> None:
    """BLOOM's q, k and v split by one unbind (backward: one stack) instead of three selects
    (backward: three zero-filled tensors summed)"""
    from transformers.models.bloom.modeling_bloom import BloomAttention

    def reshape(self, fused_qkv):
        batch, length, _ = fused_qkv.shape
        fused = fused_qkv.view(batch, length, self.num_heads, 3, self.head_dim)
        return tuple(t.transpose(1, 2) for t in fused.unbind(3))

    _swap(BloomAttention, "_reshape", reshape, on)


def mlp_chunks(model: Any, on: bool) -> None:
    """BLOOM's MLP in chunks of about 128 rows (each chunk's 4h activation cache-sized)"""
    import torch
    from transformers.models.bloom.modeling_bloom import BloomMLP, dropout_add

    def forward(self, hidden_states, residual):
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        rows = -(-flat.shape[0] // max(1, round(flat.shape[0] / 128)))
        parts = [
            self.dense_4h_to_h(self.gelu_impl(self.dense_h_to_4h(flat[start : start + rows])))
            for start in range(0, flat.shape[0], rows)
        ]
        out = torch.cat(parts).view(residual.shape)
        return dropout_add(out, residual, self.hidden_dropout, self.training)

    _swap(BloomMLP, "forward", forward, on)


def no_lora_dropout(model: Any, on: bool) -> None:
    """ceiling: LoRA's dropout taken out"""
    import adaptool.training.speed as speed

    _swap(speed, "_dropout", lambda module, x: x, on)


def lora_inplace(model: Any, on: bool) -> None:
    """LoRA's update added into the base layer's output in place (addmm_) instead of by an
    addmm that copies it"""
    import torch.nn.functional as F
    from peft.tuners.lora.layer import Linear as LoraLinear

    import adaptool.training.speed as speed

    def forward(self, x, *args, **kwargs):
        name = self.active_adapters[0]
        result = self.base_layer(x)
        dropped = speed._dropout(self.lora_dropout[name], x.to(result.dtype))
        low = F.linear(dropped, self.lora_A[name].weight.to(result.dtype))
        update = self.lora_B[name].weight.to(result.dtype).t()
        flat = result.view(-1, result.shape[-1])
        flat.addmm_(low.reshape(-1, low.shape[-1]), update, alpha=self.scaling[name])
        return result

    switched = [m for m in model.modules() if type(m) is LoraLinear and "forward" in m.__dict__]
    if not switched:
        raise SystemExit("lora-inplace: no LoRA layer takes adaptool's half-precision path")
    for module in switched:
        _swap(module, "forward", forward.__get__(module), on)


def flush_denormal(model: Any, on: bool) -> None:
    """denormal floats flushed to zero (torch.set_flush_denormal)"""
    import torch

    torch.set_flush_denormal(on)


def prepack(model: Any, on: bool) -> None:
    """the frozen base's linear weights prepacked by oneDNN (CPU) for the forward matmuls (a
    second copy of the weights; the backward keeps the plain ones)"""
    import torch

    class Packed(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, packed: Any, bias: Any) -> Any:
            ctx.save_for_backward(weight)
            flat = x.reshape(-1, x.shape[-1])
            y = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (weight,) = ctx.saved_tensors
            flat = grad.reshape(-1, grad.shape[-1]) @ weight
            return flat.view(*grad.shape[:-1], weight.shape[1]), None, None, None

    def forward(self, x):
        return Packed.apply(x, self.weight, self._ab_packed, self.bias)

    frozen = [
        module
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear
        and not module.weight.requires_grad
        and module.weight.dtype == torch.bfloat16
        and "lm_head" not in name
    ]
    if not frozen:
        raise SystemExit("prepack: no frozen bf16 linear layer to prepack")
    for module in frozen:
        if not hasattr(module, "_ab_packed"):
            module._ab_packed = torch.ops.mkldnn._reorder_linear_weight(module.weight, 512)
        if on:
            module.forward = forward.__get__(module)
        else:
            module.__dict__.pop("forward", None)


def none(model: Any, on: bool) -> None:
    """nothing: the same step on both sides (the noise)"""


CHANGES = {
    name.replace("_", "-"): function
    for name, function in [
        ("none", none),
        ("no_gelu", no_gelu),
        ("gelu_table", gelu_table),
        ("compiled_gelu", compiled_gelu),
        ("no_attention", no_attention),
        ("unbind_qkv", unbind_qkv),
        ("mlp_chunks", mlp_chunks),
        ("no_lora_dropout", no_lora_dropout),
        ("lora_inplace", lora_inplace),
        ("flush_denormal", flush_denormal),
        ("prepack", prepack),
    ]
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--change", choices=sorted(CHANGES), default="none")
    parser.add_argument("--size", choices=sorted(SIZES), default="100m")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--list", action="store_true", help="the changes, and exit")
    args = parser.parse_args()
    if args.rounds < 2 or args.rounds % 2:
        parser.error("--rounds: an even number, 2 or more (each side goes first as often)")
    if args.list:
        for name, function in CHANGES.items():
            print(f"{name:16} {' '.join(function.__doc__.split())}")
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the changes are CPU ones (before torch looks)
    import torch
    from transformers import AutoTokenizer

    from adaptool.plugins import load_plugins, use_plugins
    from adaptool.recipe import validate_recipe
    from adaptool.recipe.resolve import resolve_plugins
    from adaptool.training.batching import collate_for, step_share
    from adaptool.training.loss import loss_sum
    from adaptool.training.progress import Reporter
    from adaptool.training.setup import setup
    from adaptool.training.speed import limit_kernel_caches

    limit_kernel_caches()  # as `adaptool train` does, before the first matmul
    use_plugins(load_plugins(entry_points=False))
    with tempfile.TemporaryDirectory(prefix="step-ab-") as tmp:
        work = Path(tmp)
        hidden, layers = SIZES[args.size]
        base = build_base(work, hidden=hidden, layers=layers)
        recipe = validate_recipe(
            {
                "model": {"name": str(base)},
                "peft": {"r": 16, "alpha": 32, "dropout": 0.05, "bias": "none"},
                "data": {"source": str(DATA), "formatter": "quote-tags", "train_on_prompt": True},
                "training": {
                    "batch_size": 4,
                    "gradient_accumulation_steps": 4,
                    "max_steps": 10 * args.rounds + 20,
                    "learning_rate": 2e-3,
                    "seed": 0,
                    "save_steps": 0,
                    "compile": False,  # the changes patch eager modules
                },
                "output": {"dir": str(work / "out")},
            }
        )
        state = setup(recipe, resolve_plugins(recipe), init_adapter=None, reporter=Reporter())
        if state.model.dtype != torch.bfloat16:  # the changes are to adaptool's bf16 CPU path
            raise SystemExit(f"the model trains in {state.model.dtype} here, not bf16")
        collate, model = collate_for(state.packing), state.model
        pad_id = AutoTokenizer.from_pretrained(str(base)).pad_token_id or 0
        model.train()

        def step(index: int) -> None:
            rows = state.feed.batch(index)
            group, _ = step_share(
                rows, state.world, rows=4, budget=state.micro_batch_tokens, packed=False
            )
            for examples in group:
                batch = {k: v.to(model.device) for k, v in collate(examples, pad_id).items()}
                (loss_sum(model, batch, head=state.head) / 1000).backward()
            state.optimizer.step()
            state.optimizer.zero_grad()

        change = CHANGES[args.change]
        for index, on in enumerate((False, True, True, False)):  # warm-up, compiles included
            change(model, on)
            step(index)
        times: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(args.rounds):
            for on in (False, True) if round_ % 2 == 0 else (True, False):
                change(model, on)
                started = time.perf_counter()
                for index in range(5):
                    step(10 + 5 * round_ + index)
                times[on].append(time.perf_counter() - started)
        change(model, False)
    for on in (False, True):
        print(f"{'on ' if on else 'off'} (s per 5 steps): {[round(t, 2) for t in times[on]]}")
    off, on_ = statistics.median(times[False]), statistics.median(times[True])
    print(f"change: {args.change} ({' '.join(change.__doc__.split())})")
    print(f"gain: {off / on_:.3f}")


if __name__ == "__main__":
    main()
