"""What makes training fast is exact: micro-batches merged to a token budget take the same
step, the fused activation and the bf16 LoRA path compute what they replace, a compiled model
trains as the eager one does."""

from __future__ import annotations

import json

import pytest
import torch

from adaptool.distributed import World
from adaptool.encoding import Encoded
from adaptool.recipe import load_recipe
from adaptool.training.batching import micro_batches, step_share
from adaptool.training.run import train
from tests.helpers import recipe_file, records


def _rows(*lengths: int) -> list[Encoded]:
    return [Encoded(list(range(n)), list(range(n)), 0, n, False) for n in lengths]


def _lengths(batches) -> list[list[int]]:
    return [[len(e.input_ids) for e in batch] for batch in batches]


def test_micro_batches_hold_alike_rows_up_to_the_token_budget():
    rows = _rows(10, 40, 12, 33, 9, 100, 30)
    # padded: rows x the longest (no rounding up); the longest rows first; a row over the
    # budget alone
    assert _lengths(micro_batches(rows, 96)) == [[100], [40, 33], [30, 12, 10], [9]]
    assert sum(len(b) for b in micro_batches(rows, 96)) == len(rows)
    for batch in micro_batches(rows, 96)[1:]:
        assert len(batch) * max(len(e.input_ids) for e in batch) <= 96
    assert _lengths(micro_batches(_rows(13, 12, 12), 39)) == [[13, 12, 12]]  # 3 x 13
    # packed: their sum
    assert _lengths(micro_batches(rows, 96, packed=True)) == [[100], [40, 33], [30, 12, 10, 9]]
    assert _lengths(micro_batches(rows, 10_000)) == [[100, 40, 33, 30, 12, 10, 9]]


def test_each_process_takes_its_share_and_as_many_micro_batches_as_the_busiest():
    batch = _rows(50, 48, 20, 18, 16)
    mine, counted = step_share(batch, World(rank=0, size=2), rows=2, budget=0)
    assert _lengths(mine) == [[50, 20], [16]] and counted == 2
    theirs, counted = step_share(batch, World(rank=1, size=2), rows=2, budget=0)
    # one micro-batch of its own, then a spare (the shortest row, run for nothing) to keep
    # the two in step
    assert _lengths(theirs) == [[48, 18], [16]] and counted == 1
    merged, counted = step_share(batch, World(rank=1, size=2), rows=2, budget=10_000)
    assert _lengths(merged) == [[48, 18]] and counted == 1
    alone, counted = step_share(batch, World(), rows=2, budget=0)
    assert _lengths(alone) == [[50, 48], [20, 18], [16]] and counted == 3


def test_merged_micro_batches_take_the_steps_the_plan_s_micro_batches_take(
    tmp_path, tiny_bloom_dir, plugins
):
    """The loss is the mean over the step's trained tokens however the rows are cut: with
    dropout off, merging (auto) and batch_size-row micro-batches (0) give the same losses
    and adapter (fp32 rounding), one forward a step against two."""
    from safetensors.torch import load_file

    outs = {}
    for setting in ("0", '"auto"'):
        folder = tmp_path / setting.strip('"')
        folder.mkdir()
        path = recipe_file(folder, tiny_bloom_dir, steps=6)
        outs[setting] = train(
            load_recipe(path, ["peft.dropout=0.0", f"training.micro_batch_tokens={setting}"])
        ).output_dir
    merged, planned = outs['"auto"'], outs["0"]
    manifest = json.loads((merged / "adaptool.json").read_text())["training"]
    assert manifest["micro_batch_tokens_used"] > 0 and manifest["chunked_loss"] is True
    assert (
        json.loads((planned / "adaptool.json").read_text())["training"]["micro_batch_tokens_used"]
        == 0
    )
    losses = [r["loss"] for r in records(merged) if "loss" in r]
    assert losses == pytest.approx([r["loss"] for r in records(planned) if "loss" in r], rel=1e-5)
    a = load_file(merged / "adapter_model.safetensors")
    b = load_file(planned / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 5e-5


def test_a_tiny_budget_cuts_every_row_into_its_own_micro_batch_and_still_trains(
    tmp_path, tiny_bloom_dir, plugins
):
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=4)
    result = train(load_recipe(path, ["training.micro_batch_tokens=1"]))
    manifest = json.loads((result.output_dir / "adaptool.json").read_text())["training"]
    assert manifest["micro_batch_tokens_used"] == 1
    assert result.step == 4 and result.train_loss is not None


def test_a_checkpointed_model_s_budget_counts_the_block_its_backward_recomputes(
    tokenizer, monkeypatch
):
    from peft import LoraConfig, get_peft_model

    from adaptool import modeling
    from adaptool.testing import make_tiny_bloom
    from adaptool.training.progress import Reporter
    from adaptool.training.speed import (
        ACTIVATION_SHARE,
        activation_bytes_per_token,
        micro_batch_tokens,
    )

    monkeypatch.setattr(modeling, "free_memory", lambda: 1 << 30)
    model = get_peft_model(make_tiny_bloom(None, tokenizer), LoraConfig(r=4)).train()
    batch = {"input_ids": torch.randint(5, len(tokenizer), (2, 16))}
    batch["labels"] = batch["input_ids"]

    def budget():
        return micro_batch_tokens("auto", model, lambda: batch, head=None, reporter=Reporter())

    whole = activation_bytes_per_token(model, batch)
    plain = budget()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    kept = activation_bytes_per_token(model, batch)
    assert kept < whole / 2  # checkpointed: the blocks' inputs only
    layers = model.config.num_hidden_layers
    checkpointed = budget()
    assert plain < checkpointed  # checkpointing still lets a micro-batch take more tokens
    # ... but no more than the inputs kept plus one block recomputed at a time allow
    # (its input now requires grad, so a block keeps a little more than it did unchecked)
    share = ACTIVATION_SHARE * (1 << 30)
    assert share / (kept + 2 * whole / layers) < checkpointed <= share / (kept + whole / layers)
    assert all(
        m.gradient_checkpointing
        for m in model.modules()
        if hasattr(m, "gradient_checkpointing") and "Block" in type(m).__name__
    )


def test_bloom_s_gelu_is_swapped_for_the_fused_one_with_the_same_output(tokenizer):
    from transformers.activations import GELUTanh

    from adaptool.testing import make_tiny_bloom
    from adaptool.training.speed import fuse_activations

    model = make_tiny_bloom(None, tokenizer)
    ids = torch.randint(5, len(tokenizer), (2, 12))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert fuse_activations(model) == ["BloomGelu"]
        after = model(input_ids=ids).logits
    assert all(type(block.mlp.gelu_impl) is GELUTanh for block in model.transformer.h)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_an_activation_that_computes_something_else_is_not_swapped():
    """The swap is checked per kind: a module with a known name and other values stays."""
    from adaptool.training.speed import fuse_activations

    class BloomGelu(torch.nn.Module):  # the name of BLOOM's, but a ReLU
        def forward(self, x):
            return torch.relu(x)

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), BloomGelu())
    assert fuse_activations(model) == []
    assert type(model[1]) is BloomGelu


def test_the_bf16_lora_path_computes_peft_s_output_and_gradients(tokenizer):
    from peft import LoraConfig, get_peft_model

    from adaptool.testing import make_tiny_bloom
    from adaptool.training.speed import half_precision_lora

    def build():
        model = make_tiny_bloom(None, tokenizer).to(torch.bfloat16)
        config = LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0)
        model = get_peft_model(model, config)
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1)
        return model

    ids = torch.randint(5, len(tokenizer), (2, 12))
    results = []
    for switch in (False, True):
        model = build()
        if switch:
            assert half_precision_lora(model) == 2 * 4  # 4 linear layers in each block
        out = model(input_ids=ids).logits.float()
        out.square().mean().backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=2e-2, atol=2e-2)
    for name, grad in grads_a.items():
        scale = grad.abs().max().item()
        assert (grads_b[name] - grad).abs().max().item() <= 5e-2 * scale, name


def test_the_cpu_dropout_drops_at_its_rate_keeps_the_expectation_and_backpropagates_the_mask():
    from adaptool.training.speed import _dropout

    dropout = torch.nn.Dropout(0.05).train()
    x = torch.rand(1000, 1000) + 0.5
    x.requires_grad_(True)
    torch.manual_seed(3)
    out = _dropout(dropout, x)
    keep = out != 0
    assert abs(1 - keep.float().mean().item() - 0.05) < 0.002  # 10 standard deviations
    scale = 65536 / (65536 - 3277)  # 0.05 as 3277 / 65536
    torch.testing.assert_close(out[keep], x[keep].detach() * scale)
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.003  # the expectation kept
    out.sum().backward()
    torch.testing.assert_close(x.grad, keep.float() * scale)
    torch.manual_seed(3)  # the generator's: seeded (and checkpointed) with torch's
    assert torch.equal(_dropout(dropout, x.detach()) != 0, keep)
    assert not torch.equal(_dropout(dropout, x.detach()) != 0, keep)
    # rows and columns alike: no stretch of the tensor kept whole or dropped whole
    assert abs(1 - keep[:, :10].float().mean().item() - 0.05) < 0.01
    assert abs(1 - keep[-10:].float().mean().item() - 0.05) < 0.01
    half = _dropout(dropout, x.detach().bfloat16())
    assert (
        half.dtype == torch.bfloat16 and abs(1 - (half != 0).float().mean().item() - 0.05) < 0.002
    )
    # evaluation, no dropout and an Identity pass through
    assert torch.equal(_dropout(dropout.eval(), x), x)
    assert torch.equal(_dropout(torch.nn.Identity(), x), x)


def test_under_torch_compile_lora_dropout_is_torch_s_in_one_graph():
    """Under training.compile the bf16 LoRA path's dropout is torch's, which inductor fuses
    (dynamo cannot trace the eager mask's ``random_``: a graph break at every adapted layer):
    one graph, dropping at its rate, scaled by 1 / (1 - p)."""
    import shutil

    from adaptool.training.speed import _dropout

    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        pytest.skip("inductor compiles for the CPU with a C++ compiler; none here")
    dropout = torch.nn.Dropout(0.05).train()
    compiled = torch.compile(lambda x: _dropout(dropout, x) * 2, fullgraph=True)
    x = torch.rand(500, 400, dtype=torch.bfloat16) + 0.5
    x.requires_grad_(True)
    out = compiled(x)
    keep = out != 0
    assert out.dtype == torch.bfloat16
    assert abs(1 - keep.float().mean().item() - 0.05) < 0.004  # 8 standard deviations
    torch.testing.assert_close(out[keep], (x[keep].detach().float() * 2 / 0.95).bfloat16())
    out.float().sum().backward()
    torch.testing.assert_close(x.grad, (keep.float() * 2 / 0.95).bfloat16())


def test_an_fp32_base_keeps_peft_s_lora_path(tokenizer):
    from peft import LoraConfig, get_peft_model

    from adaptool.testing import make_tiny_bloom
    from adaptool.training.speed import half_precision_lora

    model = get_peft_model(make_tiny_bloom(None, tokenizer), LoraConfig(r=4))
    assert half_precision_lora(model) == 0


def test_a_compiled_run_trains_as_the_eager_one_and_says_how_long_it_compiled(
    tmp_path, tiny_bloom_dir, plugins
):
    """training.compile = true: each block compiled (torch.compile, inductor), the compile
    time and its speed against eager in the manifest; with dropout off the losses and the
    adapter are eager's within fp32 rounding of the fused kernels."""
    from safetensors.torch import load_file

    outs = {}
    for setting in ("false", "true"):
        folder = tmp_path / setting
        folder.mkdir()
        path = recipe_file(folder, tiny_bloom_dir, steps=3)
        outs[setting] = train(
            load_recipe(path, ["peft.dropout=0.0", f"training.compile={setting}"])
        ).output_dir
    compiled = json.loads((outs["true"] / "adaptool.json").read_text())["training"]["compiled"]
    assert compiled["blocks"] == 2 and compiled["seconds"] > 0 and compiled["gain"] > 0
    eager = json.loads((outs["false"] / "adaptool.json").read_text())["training"]["compiled"]
    assert eager["blocks"] == 0 and eager["reason"] == "training.compile = false"
    losses = [r["loss"] for r in records(outs["true"]) if "loss" in r]
    eager_losses = [r["loss"] for r in records(outs["false"]) if "loss" in r]
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    a = load_file(outs["true"] / "adapter_model.safetensors")
    b = load_file(outs["false"] / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_auto_does_not_compile_a_short_run(tmp_path, tiny_bloom_dir, plugins):
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=2)
    result = train(load_recipe(path))
    compiled = json.loads((result.output_dir / "adaptool.json").read_text())["training"]["compiled"]
    assert compiled["blocks"] == 0 and "would train for about" in compiled["reason"]
