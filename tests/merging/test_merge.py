"""adaptool merge: streamed, per-layer peft folding, equal to the adapter unmerged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptool import AdapterError, AdaptoolError
from adaptool.merging.merge import merge
from tests.helpers import (
    adapter_logits,
    merged_logits,
    trained,
)


@pytest.mark.parametrize(
    "extra",
    [(), ("peft.use_dora=true",), ("peft.use_rslora=true",)],
    ids=["lora", "dora", "rslora"],
)
def test_merged_equals_adapter_plus_base(tmp_path, tiny_bloom_dir, registry, extra):
    adapter = trained(tmp_path, tiny_bloom_dir, extra=extra)
    result = merge(adapter, output=tmp_path / "merged", dtype="fp32")
    expected = adapter_logits(adapter, tiny_bloom_dir)
    assert (merged_logits(result.output_dir) - expected).abs().max().item() <= 1e-5
    assert result.verification["reference"]["max_abs_logit_diff"] <= 1e-5
    assert result.merged_modules == 8  # all-linear on 2 layers
    manifest = json.loads((result.output_dir / "adaptool.json").read_text())
    assert manifest["kind"] == "merged" and manifest["formatter"]["name"] == "quote-tags"
    assert manifest["adapter"]["path"] == str(adapter)


def test_a_non_lora_method_merges_exactly(tmp_path, tiny_bloom_dir, registry):
    """IA3, made with plain peft, folded by adaptool. IA3 scales the output of the layers it
    adapts outside feedforward_modules, bias included: on a base with non-zero biases (which an
    all-zero bias would hide) the merged bias must be scaled too."""
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_bloom_dir), dtype=torch.float32)
    config = IA3Config(
        target_modules=["query_key_value", "dense_4h_to_h"],
        feedforward_modules=["dense_4h_to_h"],
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "ia3_l" in name:
                p.add_(torch.randn_like(p) * 0.3)
    peft_model.save_pretrained(str(tmp_path / "ia3"))
    result = merge(
        tmp_path / "ia3",
        output=tmp_path / "merged",
        dtype="fp32",
        base=str(tiny_bloom_dir),
    )
    expected = adapter_logits(tmp_path / "ia3", tiny_bloom_dir)
    assert (merged_logits(result.output_dir) - expected).abs().max().item() <= 1e-5
    key = "transformer.h.0.self_attention.query_key_value"
    base = load_file(str(tiny_bloom_dir / "model.safetensors"))
    merged = load_file(str(result.output_dir / "model.safetensors"))
    scale = load_file(str(tmp_path / "ia3" / "adapter_model.safetensors"))[
        f"base_model.model.{key}.ia3_l"
    ].flatten()
    assert base[f"{key}.bias"].abs().min() > 0
    torch.testing.assert_close(merged[f"{key}.bias"], base[f"{key}.bias"] * scale)


def test_qlora_into_dequantized_and_original(tmp_path, tiny_bloom_dir, registry):
    adapter = trained(tmp_path, tiny_bloom_dir, backend="bnb-4bit")
    deq = merge(adapter, output=tmp_path / "deq", dtype="fp32")
    orig = merge(adapter, output=tmp_path / "orig", dtype="fp32", into="original")
    as_trained_deq = deq.verification["as_trained"]["max_abs_logit_diff"]
    as_trained_orig = orig.verification["as_trained"]["max_abs_logit_diff"]
    # 4-bit with fp32 compute: the dequantized merge *is* the model as trained
    assert as_trained_deq <= 1e-4
    assert as_trained_orig > 10 * as_trained_deq  # the original weights are not what was trained
    for result in (deq, orig):
        manifest = json.loads((result.output_dir / "adaptool.json").read_text())
        assert manifest["merge"]["into"] == result.into
        assert (
            manifest["verification"]["as_trained"]["max_abs_logit_diff"]
            == result.verification["as_trained"]["max_abs_logit_diff"]
        )
    print(
        f"QLoRA merge vs model as trained: dequantized {as_trained_deq:.2e}, "
        f"original {as_trained_orig:.2e}"
    )


def test_merge_refusals(tmp_path, tiny_bloom_dir, registry):
    from adaptool.testing import make_tiny_bloom

    adapter = trained(tmp_path, tiny_bloom_dir)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(AdaptoolError, match="already exists"):
        merge(adapter, output=tmp_path / "taken")
    # a base whose shapes do not match the adapter
    from transformers import AutoTokenizer

    other = tmp_path / "other-base"
    make_tiny_bloom(other, AutoTokenizer.from_pretrained(str(tiny_bloom_dir)), hidden_size=32)
    with pytest.raises(AdapterError, match="does not fit the base"):
        merge(adapter, output=tmp_path / "m", base=str(other))
    # prompt tuning has no weights to fold
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "PROMPT_TUNING",
                "task_type": "CAUSAL_LM",
                "num_virtual_tokens": 4,
                "token_dim": 64,
                "num_transformer_submodules": 1,
                "num_attention_heads": 4,
                "num_layers": 2,
                "base_model_name_or_path": str(tiny_bloom_dir),
            }
        )
    )
    save_file(
        {"prompt_embeddings": torch.zeros(4, 64)},
        str(tmp_path / "pt" / "adapter_model.safetensors"),
    )
    with pytest.raises(AdapterError, match="prompt tuning adapter, which cannot be merged"):
        merge(tmp_path / "pt", output=tmp_path / "m2")


def test_sharded_base_merges_shard_by_shard(tmp_path, tiny_bloom_dir, registry):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sharded = tmp_path / "sharded-base"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_bloom_dir), dtype=torch.float32)
    model.save_pretrained(str(sharded), max_shard_size="100KB")
    AutoTokenizer.from_pretrained(str(tiny_bloom_dir)).save_pretrained(str(sharded))
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 3
    adapter = trained(tmp_path, tiny_bloom_dir)
    result = merge(adapter, output=tmp_path / "merged", dtype="fp32", base=str(sharded))
    assert result.shards == len(shards)
    assert sorted(p.name for p in result.output_dir.glob("model-*.safetensors")) == [
        p.name for p in shards
    ]
    index = json.loads((result.output_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set().union(*(load_file(str(s)).keys() for s in shards))
    expected = adapter_logits(adapter, tiny_bloom_dir)
    assert (merged_logits(result.output_dir) - expected).abs().max().item() <= 1e-5


def test_base_given_when_the_recorded_base_is_gone(tmp_path, tiny_bloom_dir, plugins):
    """An adapter trained on another machine (its recorded base does not exist here) merges
    with base= and verifies against that base — single adapters and combinations alike."""
    import shutil

    from adaptool.merging.combine import combine

    there = tmp_path / "there"
    shutil.copytree(tiny_bloom_dir, there)
    a = trained(tmp_path, there, name="a")
    b = trained(tmp_path, there, name="b", extra=("training.seed=5",))
    shutil.rmtree(there)  # the machine it was trained on
    here = tmp_path / "here"
    shutil.copytree(tiny_bloom_dir, here)

    result = merge(a, output=tmp_path / "m", dtype="fp32", base=str(here))
    assert result.verification["reference"]["max_abs_logit_diff"] <= 1e-4
    expected = adapter_logits(a, here)
    assert (merged_logits(result.output_dir) - expected).abs().max().item() <= 1e-5
    assert result.manifest.base_model.name == str(here)

    both = combine([a, b], output=tmp_path / "c", full=True, base=str(here), dtype="fp32")
    assert both.merged.verification["reference"]["max_abs_logit_diff"] <= 1e-4
