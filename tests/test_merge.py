"""adaptool merge: streamed, per-layer peft folding, verified against the adapter unmerged."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptool import AdapterError, AdaptoolError
from adaptool.errors import MergeVerificationError
from adaptool.merging.merge import merge
from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.test_train import recipe_file

IDS = torch.tensor([[5, 17, 33, 9, 100, 41, 7, 250]])


def trained(tmp_path, base, *, backend="none", extra=(), name="a"):
    path = recipe_file(tmp_path, base, backend=backend, steps=6, name=f"{name}.toml")
    overrides = [f"output.dir={tmp_path / name}", *extra]
    return train(load_recipe(path, overrides)).output_dir


def logits_of(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def adapter_logits(adapter, base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    return logits_of(PeftModel.from_pretrained(model, str(adapter)).eval())


def merged_logits(folder):
    from transformers import AutoModelForCausalLM

    return logits_of(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32))


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
    """IA3, made with plain peft, folded by adaptool."""
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


def test_verification_catches_a_corrupted_merge(tmp_path, tiny_bloom_dir, registry, monkeypatch):
    import adaptool.merging.merge as merging

    adapter = trained(tmp_path, tiny_bloom_dir)
    real_fold = merging.fold

    def tampered(*args):
        weight, bias = real_fold(*args)
        weight[0, :4] += 0.5  # one tensor, slightly wrong
        return weight, bias

    monkeypatch.setattr(merging, "fold", tampered)
    with pytest.raises(MergeVerificationError, match="the merge is wrong"):
        merge(adapter, output=tmp_path / "bad", dtype="fp32")
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.tmp").exists()


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
    with pytest.raises(AdapterError, match="does not fit the base layer"):
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
    with pytest.raises(AdapterError, match="no weights to fold"):
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


def test_cli_merge_and_generate_from_the_merged_model(tmp_path, tiny_bloom_dir, plugins):
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    adapter = trained(tmp_path, tiny_bloom_dir)
    app = build_app(plugins)
    result = CliRunner().invoke(
        app, ["merge", str(adapter), "--output", str(tmp_path / "m"), "--dtype", "fp32"]
    )
    assert result.exit_code == 0, result.output
    assert "verified on" in result.output and "max |Δ logits|" in result.output
    out_merged = CliRunner().invoke(
        app,
        ["generate", str(tmp_path / "m"), "Knowledge is power.", "--json", "--max-new-tokens", "6"],
    )
    out_adapter = CliRunner().invoke(
        app, ["generate", str(adapter), "Knowledge is power.", "--json", "--max-new-tokens", "6"]
    )
    merged_gen, adapter_gen = json.loads(out_merged.output), json.loads(out_adapter.output)
    assert merged_gen["prompt"] == "“Knowledge is power.” ->: "  # formatter from the manifest
    assert merged_gen["output"] == adapter_gen["output"]
    again = CliRunner().invoke(app, ["merge", str(adapter), "--output", str(tmp_path / "m")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def weight_deltas(merged_dir, base_dir):
    merged, base = (
        load_file(str(merged_dir / "model.safetensors")),
        load_file(str(base_dir / "model.safetensors")),
    )
    return {k: merged[k].float() - base[k].float() for k in merged if k.endswith(".weight")}


@pytest.fixture
def two_adapters(tmp_path, tiny_bloom_dir, registry):
    a = trained(tmp_path, tiny_bloom_dir, name="a")
    b = trained(
        tmp_path,
        tiny_bloom_dir,
        name="b",
        extra=("training.seed=99", "data.train_on_prompt=true"),
    )
    return a, b


def test_cat_with_weights_one_zero_reproduces_the_first_adapter(
    tmp_path, tiny_bloom_dir, registry, two_adapters
):
    from adaptool.merging.combine import combine

    a, b = two_adapters
    result = combine(
        [a, b],
        output=tmp_path / "cat10",
        weights=[1.0, 0.0],
        combination="cat",
        full=True,
        dtype="fp32",
    )
    single = merge(a, output=tmp_path / "only-a", dtype="fp32")
    combined, first = (
        weight_deltas(result.output_dir, tiny_bloom_dir),
        weight_deltas(single.output_dir, tiny_bloom_dir),
    )
    assert max((combined[k] - first[k]).abs().max().item() for k in first) <= 1e-6
    manifest = json.loads((result.output_dir / "adaptool.json").read_text())
    parents = manifest["adapter"]["manifest"]["combined"]["parents"]
    assert [p["path"] for p in parents] == [str(a), str(b)]


def test_cat_with_half_weights_averages_the_weight_deltas(
    tmp_path, tiny_bloom_dir, registry, two_adapters
):
    from adaptool.merging.combine import combine

    a, b = two_adapters
    combine([a, b], output=tmp_path / "avg", weights=[0.5, 0.5], combination="cat")
    adapter_manifest = json.loads((tmp_path / "avg" / "adaptool.json").read_text())
    assert adapter_manifest["combined"]["weights"] == [0.5, 0.5]
    avg = merge(tmp_path / "avg", output=tmp_path / "avg-m", dtype="fp32")
    da = weight_deltas(merge(a, output=tmp_path / "ma", dtype="fp32").output_dir, tiny_bloom_dir)
    db = weight_deltas(merge(b, output=tmp_path / "mb", dtype="fp32").output_dir, tiny_bloom_dir)
    d = weight_deltas(avg.output_dir, tiny_bloom_dir)
    assert max((d[k] - 0.5 * (da[k] + db[k])).abs().max().item() for k in d) <= 1e-6
    assert max(da[k].abs().max().item() for k in da) > 1e-3  # the adapters do something


def test_combining_refuses_adapters_of_different_bases(tmp_path, tiny_bloom_dir, registry):
    from transformers import AutoTokenizer

    from adaptool.merging.combine import combine
    from adaptool.testing import make_tiny_bloom

    a = trained(tmp_path, tiny_bloom_dir, name="a")
    other = tmp_path / "other-base"
    make_tiny_bloom(other, AutoTokenizer.from_pretrained(str(tiny_bloom_dir)), seed=3)
    b = trained(tmp_path, other, name="b")
    with pytest.raises(AdapterError, match="different bases"):
        combine([a, b], output=tmp_path / "c")
    with pytest.raises(AdaptoolError, match="needs density="):
        combine([a, a], output=tmp_path / "c", combination="ties")


def test_cli_combines_adapters(tmp_path, plugins, two_adapters):
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    a, b = two_adapters
    result = CliRunner().invoke(
        build_app(plugins),
        [
            "merge",
            "--adapter",
            str(a),
            "--adapter",
            str(b),
            "--weight",
            "0.7",
            "--weight",
            "0.3",
            "--combine",
            "linear",
            "--output",
            str(tmp_path / "lin"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "combined 2 adapters (linear, weights 0.7, 0.3)" in result.output
    assert (tmp_path / "lin" / "adapter_model.safetensors").is_file()
    args = ["merge", "--adapter", str(a), "--adapter", str(b), "--output", str(tmp_path / "t")]
    ties = CliRunner().invoke(build_app(plugins), [*args, "--combine", "ties"])
    assert ties.exit_code == 2 and "ties needs --density" in ties.output, ties.output
    unknown = CliRunner().invoke(build_app(plugins), [*args, "--combine", "average"])
    assert unknown.exit_code == 2 and "'average' is not one of" in unknown.output


def test_peak_memory_stays_near_one_shard(tmp_path, tokenizer):
    """Merging an 80 MB base in 16 MB shards must not hold the model in memory."""
    import subprocess
    import sys

    from adaptool.testing import make_sharded_base_with_adapter

    base, adapter = make_sharded_base_with_adapter(
        tmp_path, tokenizer=tokenizer, hidden_size=512, n_layer=6, shard="16MB"
    )
    shards = list(base.glob("model-*.safetensors"))
    model_mb = sum(p.stat().st_size for p in shards) / 2**20
    assert len(shards) >= 5 and model_mb > 70
    code = f"""
import json
import peft, safetensors, torch, transformers  # imports happen before the baseline
from adaptool.merging.merge import merge
from adaptool.plugins import load_plugins, use_plugins
from adaptool.testing import peak_rss_mb, rss_mb
use_plugins(load_plugins(entry_points=False))
baseline = rss_mb()
merge({str(adapter)!r}, output={str(tmp_path / "merged")!r}, base={str(base)!r}, dtype="fp32",
      verify=False)
print(json.dumps({{"baseline": baseline, "peak": peak_rss_mb()}}))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    growth = measured["peak"] - measured["baseline"]
    largest_shard = max(p.stat().st_size for p in shards) / 2**20
    print(f"merge of {model_mb:.0f} MB in {len(shards)} shards: peak RSS grew {growth:.1f} MB")
    # well under the model (peft's merge holds all of it, and more), near a few shards; the
    # allocator's own slack moves the measured growth between about 20 and 37 MB here
    assert growth < model_mb / 1.5, measured
    assert growth < 3 * largest_shard + 10, measured


def test_an_adapter_trained_on_a_bf16_base_verifies_in_fp32(tmp_path, tiny_bloom_dir, registry):
    adapter = trained(tmp_path, tiny_bloom_dir, extra=('model.dtype="bfloat16"',))
    result = merge(adapter, output=tmp_path / "m", dtype="fp32")
    assert result.verification["reference"]["max_abs_logit_diff"] <= 1e-4


def test_merge_never_overwrites_its_input(tmp_path, tiny_bloom_dir, registry):
    adapter = trained(tmp_path, tiny_bloom_dir)
    with pytest.raises(AdaptoolError, match="would replace the input"):
        merge(adapter, output=adapter, overwrite=True)
    with pytest.raises(AdaptoolError, match="would replace the input"):
        merge(adapter, output=tmp_path, overwrite=True)
    assert (adapter / "adapter_model.safetensors").is_file()
