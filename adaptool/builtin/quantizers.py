"""Built-in quantization backends: bitsandbytes 4-bit (nf4/fp4) and 8-bit, and none."""

from __future__ import annotations

import functools
from typing import Any, Literal

from adaptool.base import Options, Quantizer
from adaptool.errors import PluginError
from adaptool.hookspecs import hookimpl


class NoQuantization(Quantizer):
    """Load the base as is (its dtype is the recipe's ``model.dtype``)."""

    name = "none"
    description = "no quantization: the base in its own dtype"
    quantized = False

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        return {}


def disable_cpu_bf16_repack(model: Any) -> Any:
    """bitsandbytes 0.50 on CPUs with AVX512-BF16: the first no-grad forward of a Linear4bit
    repacks its weight for good, after which training fails or silently stops updating and
    merges come out wrong (see shared COMPAT notes). Turning the fast path off avoids it."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def bnb_quantized_layers(model: Any, skip_modules: list[str] | None) -> set[str]:
    """The linear layers transformers replaces with bitsandbytes layers, decided by its own
    rules (default skips such as the output head, the model's fp32 modules, the recipe's
    ``skip_modules``)."""
    import torch
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    patterns = HfQuantizer.get_modules_to_not_convert(
        model, skip_modules, getattr(model, "_keep_in_fp32_modules", None)
    )
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and should_convert_module(name, patterns)
    }


class Bnb4bit(Quantizer):
    """bitsandbytes 4-bit (QLoRA): nf4 or fp4 weights, optional double quantization."""

    name = "bnb-4bit"
    description = "bitsandbytes 4-bit (nf4|fp4), QLoRA"

    class Options(Options):
        quant_type: Literal["nf4", "fp4"] = "nf4"
        double_quant: bool = True
        compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
        skip_modules: list[str] | None = None
        #: the container the packed 4-bit weights are stored in: uint8, or a float dtype
        #: FSDP can shard ("auto": uint8, the compute dtype under FSDP)
        quant_storage: Literal["auto", "uint8", "float32", "bfloat16", "float16"] = "auto"

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        import torch
        from transformers import BitsAndBytesConfig

        storage = self.options.quant_storage
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.options.quant_type,
                bnb_4bit_use_double_quant=self.options.double_quant,
                bnb_4bit_compute_dtype=getattr(torch, self.options.compute_dtype),
                bnb_4bit_quant_storage=getattr(torch, "uint8" if storage == "auto" else storage),
                llm_int8_skip_modules=self.options.skip_modules,
            )
        }

    def for_sharding(self) -> Bnb4bit:
        """QLoRA under FSDP: the packed weights in a float container (the compute dtype,
        unless the recipe names one), which FSDP splits and gathers like any weight."""
        storage = self.options.quant_storage
        if storage == "uint8":
            raise PluginError(
                'quantization.quant_storage = "uint8": FSDP shards floating-point '
                'tensors only; leave it "auto" (the compute dtype under FSDP) or name a float '
                "dtype."
            )
        if storage != "auto":
            return self
        update = {"quant_storage": self.options.compute_dtype}
        return type(self)(self.options.model_copy(update=update))

    def after_load(self, model: Any) -> Any:
        return disable_cpu_bf16_repack(model)

    def quantized_layers(self, model: Any) -> set[str]:
        return bnb_quantized_layers(model, self.options.skip_modules)

    def round_trip(self, weight: Any, *, dtype: Any) -> Any:
        import bitsandbytes.functional as F

        packed, state = F.quantize_4bit(
            weight.to(dtype).contiguous(),
            blocksize=64,
            compress_statistics=self.options.double_quant,
            quant_type=self.options.quant_type,
        )
        return F.dequantize_4bit(packed, state).float()


class Bnb8bit(Quantizer):
    """bitsandbytes LLM.int8() 8-bit weights, as in the reference notebook."""

    name = "bnb-8bit"
    description = "bitsandbytes 8-bit (LLM.int8)"

    class Options(Options):
        threshold: float = 6.0
        skip_modules: list[str] | None = None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_8bit=True,
                llm_int8_threshold=self.options.threshold,
                llm_int8_skip_modules=self.options.skip_modules,
            )
        }

    def after_load(self, model: Any) -> Any:
        return frozen_int8_training(disable_cpu_bf16_repack(model))

    def for_sharding(self) -> Bnb8bit:
        raise PluginError(
            'quantization.backend = "bnb-8bit" under distributed.strategy = "fsdp": LLM.int8 '
            "weights (int8 rows with their scales) cannot be split by FSDP. Use "
            '"bnb-4bit" (QLoRA, which FSDP shards), or strategy = "ddp".'
        )

    def quantized_layers(self, model: Any) -> set[str]:
        return bnb_quantized_layers(model, self.options.skip_modules)

    def round_trip(self, weight: Any, *, dtype: Any) -> Any:
        import bitsandbytes.functional as F
        import torch

        # as Int8Params quantizes: fp16, one absmax scale per output row
        rows, scales, _ = F.int8_vectorwise_quant(weight.to(torch.float16).contiguous())
        return rows.float() * (scales.float().unsqueeze(1) / 127.0)


@hookimpl
def register_quantizers(register) -> None:
    for cls in (NoQuantization, Bnb4bit, Bnb8bit):
        register(cls)


def frozen_int8_training(model: Any) -> Any:
    """bitsandbytes trains an 8-bit layer on the CPU by dequantizing its weight for each
    matmul (``MatMul8bitFp``), keeping the layer's input for a weight gradient that a frozen
    base never takes: one input per layer held to the backward, all but invisible (an
    attribute, not a saved tensor). :class:`FrozenInt8` does the same arithmetic and keeps
    nothing but the layer: the backward dequantizes the weight again."""
    import bitsandbytes as bnb

    for module in model.modules():
        if type(module) is bnb.nn.Linear8bitLt:
            module.forward = _frozen_int8_forward.__get__(module)
    return model


def _frozen_int8_forward(self: Any, x: Any) -> Any:
    trained = self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
    if not (self.training and x.device.type == "cpu") or trained:  # bitsandbytes' own path
        return type(self).forward(self, x)
    self.state.is_training = True
    if self.weight.CB is not None:
        self.init_8bit_state()
    if self.bias is not None and self.bias.dtype != x.dtype:
        self.bias.data = self.bias.data.to(x.dtype)
    return _frozen_int8_function().apply(x, self)


@functools.cache
def _frozen_int8_function() -> Any:
    import torch
    import torch.nn.functional as F

    def weight(layer: Any, dtype: Any) -> Any:  # as bitsandbytes dequantizes it
        state = layer.state
        return state.CB.to(dtype).mul_(state.SCB.unsqueeze(1).mul(1.0 / 127.0))

    class FrozenInt8(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, layer: Any) -> Any:
            ctx.layer, ctx.dtype = layer, x.dtype
            return F.linear(x, weight(layer, x.dtype), layer.bias)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return grad.to(ctx.dtype) @ weight(ctx.layer, ctx.dtype), None

    return FrozenInt8
