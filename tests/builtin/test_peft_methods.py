"""The built-in PEFT methods."""

from __future__ import annotations

import pytest

from adaptool.base import RunInfo
from tests.helpers import load, make


@pytest.mark.parametrize(
    ("options", "dora", "rslora"),
    [({}, False, False), ({"use_dora": True}, True, False), ({"use_rslora": True}, False, True)],
)
def test_lora_config_wraps_the_base(registry, plugins, tiny_bloom_dir, options, dora, rslora):
    from peft import get_peft_model

    from adaptool.recipe import PeftSection

    method = make(registry, "peft-method", "lora", **options)
    config = method.peft_config(PeftSection(r=4, alpha=8.0, dropout=0.0), RunInfo())
    assert (config.r, config.lora_alpha, config.use_dora, config.use_rslora) == (
        4,
        8.0,
        dora,
        rslora,
    )
    model = get_peft_model(load(tiny_bloom_dir, make(registry, "quantizer", "none")), config)
    # auto targets: peft's default for bloom, query_key_value (64 -> 192) in each of 2 layers
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    magnitude = 192 * 2 if dora else 0
    assert trainable == 2 * 4 * (64 + 192) + magnitude
    assert config.target_modules == {"query_key_value"}


def test_lora_explicit_targets_and_init(registry):
    from adaptool.recipe import PeftSection

    method = make(registry, "peft-method", "lora", init="gaussian")
    config = method.peft_config(PeftSection(target_modules=["dense"], bias="lora_only"), RunInfo())
    assert config.init_lora_weights == "gaussian"
    assert config.target_modules == {"dense"} and config.bias == "lora_only"
