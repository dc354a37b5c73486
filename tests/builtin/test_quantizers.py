"""The built-in quantizers on a tiny BLOOM."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import load, make


def test_none_loads_the_base_as_is(registry, tiny_bloom_dir):
    quantizer = make(registry, "quantizer", "none")
    assert quantizer.from_pretrained_kwargs() == {} and not quantizer.quantized
    model = load(tiny_bloom_dir, quantizer)
    assert type(model.transformer.h[0].self_attention.query_key_value) is torch.nn.Linear


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bnb_4bit_quantizes_and_disables_the_cpu_repack(registry, tiny_bloom_dir, quant_type):
    import bitsandbytes as bnb

    quantizer = make(
        registry, "quantizer", "bnb-4bit", quant_type=quant_type, compute_dtype="float32"
    )
    config = quantizer.from_pretrained_kwargs()["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == quant_type
    assert config.bnb_4bit_use_double_quant is True
    model = load(tiny_bloom_dir, quantizer)
    layer = model.transformer.h[0].self_attention.query_key_value
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == quant_type
    assert all(
        not m.support_avx512bf16_for_cpu
        for m in model.modules()
        if hasattr(m, "support_avx512bf16_for_cpu")
    )
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    assert quantizer.describe() == {
        "backend": "bnb-4bit",
        "quant_type": quant_type,
        "double_quant": True,
        "compute_dtype": "float32",
        "skip_modules": None,
        "quant_storage": "auto",
    }
    assert config.bnb_4bit_quant_storage == torch.uint8


def test_fsdp_gets_4bit_weights_in_a_float_container_and_refuses_8bit(registry, tiny_bloom_dir):
    """FSDP splits floating-point tensors: under it a 4-bit base stores its packed weights in
    the compute dtype (the same numbers: the logits are those of the uint8 storage); a uint8
    storage asked for, and LLM.int8 weights, are refused with the reason."""
    from adaptool.errors import PluginError

    quantizer = make(registry, "quantizer", "bnb-4bit", compute_dtype="float32")
    sharded = quantizer.for_sharding()
    config = sharded.from_pretrained_kwargs()["quantization_config"]
    assert config.bnb_4bit_quant_storage == torch.float32
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        packed = load(tiny_bloom_dir, sharded)
        weight = packed.transformer.h[0].self_attention.query_key_value.weight
        assert weight.dtype == torch.float32 and weight.is_floating_point()
        assert torch.equal(packed(ids).logits, load(tiny_bloom_dir, quantizer)(ids).logits)
    named = make(registry, "quantizer", "bnb-4bit", quant_storage="bfloat16")
    assert named.for_sharding() is named
    with pytest.raises(PluginError, match="quant_storage"):
        make(registry, "quantizer", "bnb-4bit", quant_storage="uint8").for_sharding()
    with pytest.raises(PluginError, match=r"LLM\.int8"):
        make(registry, "quantizer", "bnb-8bit").for_sharding()
    none = make(registry, "quantizer", "none")
    assert none.for_sharding() is none


def test_bnb_8bit_quantizes(registry, tiny_bloom_dir):
    import bitsandbytes as bnb

    quantizer = make(registry, "quantizer", "bnb-8bit", threshold=5.0)
    assert quantizer.from_pretrained_kwargs()["quantization_config"].llm_int8_threshold == 5.0
    model = load(tiny_bloom_dir, quantizer)
    assert isinstance(model.transformer.h[0].mlp.dense_h_to_4h, bnb.nn.Linear8bitLt)


def test_8bit_layers_train_on_the_cpu_as_bitsandbytes_does_without_keeping_their_input(
    registry, tiny_bloom_dir
):
    """bitsandbytes' CPU training path keeps each 8-bit layer's input for a weight gradient
    a frozen base never takes; adaptool's computes the same output and input gradient and
    lets the input go. A trainable bias takes bitsandbytes' own path (it needs the input)."""
    import gc
    import weakref

    model = load(tiny_bloom_dir, make(registry, "quantizer", "bnb-8bit")).train()
    layer = model.transformer.h[0].mlp.dense_h_to_4h
    for p in model.parameters():
        p.requires_grad_(False)
    leaf = torch.randn(3, 5, layer.in_features, requires_grad=True)
    results = []
    for forward in (type(layer).forward.__get__(layer), layer):  # bitsandbytes', adaptool's
        leaf.grad = None
        hidden = leaf * 2.0  # an activation: kept only if something holds it for the backward
        kept = weakref.ref(hidden)
        out = forward(hidden)
        del hidden
        gc.collect()
        results.append((out.detach(), kept() is not None))
        out.square().sum().backward()
        results[-1] += (leaf.grad.clone(),)
    (theirs, they_keep, their_grad), (ours, we_keep, our_grad) = results
    assert they_keep and not we_keep
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(our_grad, their_grad)
    layer.bias.requires_grad_(True)
    hidden = leaf * 2.0
    kept = weakref.ref(hidden)
    out = layer(hidden)
    del hidden
    gc.collect()
    assert kept() is not None  # bitsandbytes' path: the bias gets its gradient
    out.sum().backward()
    assert layer.bias.grad is not None
