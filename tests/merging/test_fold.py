"""A method plugin's fold(): one adapted layer merged on its own, weight and bias, must equal
what peft's ``merge_and_unload`` makes of the whole model, for every method the streamed merge
folds (peft's own layer code by default; VeRA, LN tuning and AdaLoRA fold their own way)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from adaptool.base import LayerToFold
from adaptool.builtin import peft_methods as m
from adaptool.errors import AdapterError
from adaptool.merging.fold import group_by_module
from adaptool.testing import make_tiny_bloom, make_tokenizer

pytestmark = pytest.mark.filterwarnings(  # peft mistakes lora_B.bias for a ZeRO-3 shard
    r"ignore:Adapter 'default'.*LoRA tensor\(s\) have invalid shape"
)
ATOL = 1e-5
CORPUS = ["the quick brown fox jumps over the lazy dog", "a merged adapter is a plain model"] * 8


def lora(**kw: Any) -> Any:
    from peft import LoraConfig

    kw.setdefault("target_modules", ["query_key_value", "dense_h_to_4h", "dense_4h_to_h"])
    return LoraConfig(r=4, lora_alpha=8, **kw)


def ia3(**kw: Any) -> Any:
    from peft import IA3Config

    return IA3Config(task_type="CAUSAL_LM", **kw)


def loha() -> Any:
    from peft import LoHaConfig

    return LoHaConfig(r=4, alpha=8, target_modules=["query_key_value", "dense_4h_to_h"])


def lokr() -> Any:
    from peft import LoKrConfig

    return LoKrConfig(r=4, alpha=8, target_modules=["query_key_value", "dense_4h_to_h"])


def oft() -> Any:
    from peft import OFTConfig

    return OFTConfig(r=0, oft_block_size=8, target_modules=["query_key_value", "dense"])


def fourierft() -> Any:
    from peft import FourierFTConfig

    return FourierFTConfig(n_frequency=50, target_modules=["query_key_value", "dense_4h_to_h"])


def boft() -> Any:
    from peft import BOFTConfig

    return BOFTConfig(boft_block_size=4, target_modules=["query_key_value", "dense"])


def vera() -> Any:
    from peft import VeraConfig

    return VeraConfig(r=8, target_modules=["query_key_value", "dense_4h_to_h"])


def hra() -> Any:
    from peft import HRAConfig

    return HRAConfig(r=4, target_modules=["query_key_value", "dense_4h_to_h"])


def adalora() -> Any:
    from peft import AdaLoraConfig

    return AdaLoraConfig(init_r=6, target_r=4, total_step=10, target_modules=["query_key_value"])


def ln_tuning() -> Any:
    from peft import LNTuningConfig

    return LNTuningConfig(target_modules=["input_layernorm", "ln_f"])


#: id -> (method plugin, peft config, whether merging changes the adapted layers' biases: True,
#: False, or None for some layers' and not others')
CASES: dict[str, tuple[Any, Callable[[], Any], bool | None]] = {
    "lora": (m.Lora, lora, False),
    "lora_rank_and_alpha_pattern": (
        m.Lora,
        lambda: lora(
            rank_pattern={"h.1.self_attention.query_key_value": 2},
            alpha_pattern={"h.0.mlp.dense_4h_to_h": 3},
        ),
        False,
    ),
    "lora_with_lora_bias_adds_to_the_bias": (m.Lora, lambda: lora(lora_bias=True), True),
    "dora": (m.Lora, lambda: lora(use_dora=True), False),
    "rslora": (m.Lora, lambda: lora(use_rslora=True), False),
    # IA3 scales the output, bias included, of a layer outside feedforward_modules ...
    "ia3_not_feedforward_scales_the_bias": (
        m.IA3,
        lambda: ia3(target_modules=["query_key_value", "dense_h_to_4h"], feedforward_modules=[]),
        True,
    ),
    # ... and the input of a feedforward one, leaving its bias alone
    "ia3_feedforward_keeps_the_bias": (
        m.IA3,
        lambda: ia3(target_modules=["dense_4h_to_h"], feedforward_modules=["dense_4h_to_h"]),
        False,
    ),
    # peft's defaults for BLOOM: query_key_value (scaled output), dense_4h_to_h (feedforward)
    "ia3_bloom_defaults_mixed": (m.IA3, ia3, None),
    "loha": (m.LoHa, loha, False),
    "lokr": (m.LoKr, lokr, False),
    "oft": (m.OFT, oft, False),
    "boft": (m.BOFT, boft, False),
    "fourierft": (m.FourierFT, fourierft, False),
    "vera_shared_projections": (m.VeRA, vera, False),
    "hra": (m.HRA, hra, False),
    "adalora": (m.AdaLoRA, adalora, False),
    # the tuned copy of a layer norm replaces it, bias included
    "ln_tuning_replaces_the_layer_norm": (m.LNTuning, ln_tuning, True),
}


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    """A tiny BLOOM whose biases (linear and layer norm) are random, not zero."""
    tokenizer = make_tokenizer(None, CORPUS, vocab_size=300, chat_template=None)
    model = make_tiny_bloom(None, tokenizer, hidden_size=32, n_head=4, seed=1).eval()
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    assert biases and all(p.abs().min() > 0 for p in biases)
    return model


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def merged(request: pytest.FixtureRequest, tiny_model: Any) -> dict[str, Any]:
    """The case's adapter on the tiny model, with every adapter tensor perturbed so the merge
    changes something; the base's tensors, the adapter's grouped by module, and what peft's
    ``merge_and_unload`` makes of the model."""
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict

    base = {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}
    method, make_config, changes_bias = CASES[request.param]
    model = get_peft_model(copy.deepcopy(tiny_model), make_config())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, tensor in model.named_parameters():
            if tensor.requires_grad:  # the adapter's own tensors
                noise = torch.randn(tensor.shape, generator=generator)
                tensor.add_(0.1 * noise.to(tensor.dtype))
    config = model.peft_config["default"]
    by_module, shared = group_by_module(get_peft_model_state_dict(model), method())
    reference = {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}
    return {
        "base": base,
        "by_module": by_module,
        "shared": shared,
        "method": method(),
        "config": config,
        "reference": reference,
        "changes_bias": changes_bias,
    }


def fold_all(case: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    base = case["base"]
    return {
        module: case["method"].fold(
            LayerToFold(
                module,
                base[f"{module}.weight"],
                base.get(f"{module}.bias"),
                state,
                case["shared"],
                case["config"],
            )
        )
        for module, state in case["by_module"].items()
    }


def test_the_case_merges_as_expected(merged: dict[str, Any]) -> None:
    """Each case is a real one: merge_and_unload moves every adapted weight, and the biases
    just where the method says (None: some layers' biases and not others')."""
    moved = []
    for module in merged["by_module"]:
        weight, bias = f"{module}.weight", f"{module}.bias"
        assert not torch.allclose(merged["reference"][weight], merged["base"][weight], atol=1e-4)
        moved.append(not torch.equal(merged["reference"][bias], merged["base"][bias]))
    expected = merged["changes_bias"]
    assert (any(moved) and not all(moved)) if expected is None else moved == [expected] * len(moved)


def test_folded_weight_equals_merge_and_unload(merged: dict[str, Any]) -> None:
    for module, (weight, _) in fold_all(merged).items():
        torch.testing.assert_close(
            weight,
            merged["reference"][f"{module}.weight"],
            atol=ATOL,
            rtol=0,
            msg=lambda m, module=module: f"folded weight of {module} != merge_and_unload's: {m}",
        )


def test_folded_bias_equals_merge_and_unload(merged: dict[str, Any]) -> None:
    for module, (_, bias) in fold_all(merged).items():
        expected = merged["reference"][f"{module}.bias"]
        assert bias is not None, f"fold dropped the bias of {module}"
        torch.testing.assert_close(
            bias,
            expected,
            atol=ATOL,
            rtol=0,
            msg=lambda m, module=module: f"folded bias of {module} != merge_and_unload's: {m}",
        )


def lone_lora_state(
    out_features: int, in_features: int, *, lora_bias: bool = False
) -> tuple[dict[str, Any], Any]:
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from torch import nn

    class Lone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(in_features, out_features, bias=True)

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["proj"], lora_bias=lora_bias)
    model = get_peft_model(Lone(), config)
    grouped, _ = group_by_module(get_peft_model_state_dict(model), m.Lora())
    return grouped["proj"], model.peft_config["default"]


def fold(weight: Any, bias: Any, state: dict[str, Any], config: Any, module: str) -> Any:
    return m.Lora().fold(LayerToFold(module, weight, bias, state, {}, config))


def test_fold_without_a_bias_returns_none() -> None:
    state, config = lone_lora_state(6, 4)
    weight, bias = fold(torch.randn(6, 4), None, state, config, "proj")
    assert weight.shape == (6, 4) and bias is None


def test_fold_refuses_an_adapter_for_another_shape() -> None:
    state, config = lone_lora_state(6, 4)
    with pytest.raises(AdapterError, match="does not fit the base layer"):
        fold(torch.randn(8, 4), torch.randn(8), state, config, "proj")


def test_fold_refuses_a_lora_bias_for_a_layer_without_one() -> None:
    state, config = lone_lora_state(6, 4, lora_bias=True)
    with pytest.raises(AdapterError, match="lora_bias"):
        fold(torch.randn(6, 4), None, state, config, "proj")
