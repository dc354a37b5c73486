"""FSDP's pieces on a real FSDP2 model in a gloo world of one process (the two-process runs
are in test_distributed.py): the adapter read whole as an unsharded peft model reads, the
optimizer state gathered whole and split back, and what FSDP refuses, with the reason."""

from __future__ import annotations

import copy
import socket

import pytest
import torch

from adaptool.recipe import load_recipe
from adaptool.recipe.resolve import resolve_plugins
from adaptool.sharding import (
    held_by_this_process,
    is_sharded,
    load_optimizer_state,
    refusals,
    whole_adapter,
    whole_optimizer_state,
)
from tests.helpers import method_recipe, recipe_file

IDS = torch.tensor([[3, 8, 21, 5, 9, 14, 2, 30], [7, 7, 1, 40, 11, 6, 19, 4]])


@pytest.fixture
def world_of_one():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def lora_llama():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    base = LlamaForCausalLM(config)
    for module in base.modules():  # non-zero everything: a wrong gather would show
        for param in module.parameters(recurse=False):
            torch.nn.init.normal_(param, std=0.2)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(base, lora)


def sharded(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def train_step(model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=IDS, labels=IDS).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer


def test_the_whole_adapter_reads_and_saves_as_the_unsharded_model_does(world_of_one, tmp_path):
    from safetensors.torch import load_file
    from torch.distributed.tensor import DTensor

    plain = lora_llama()
    model = sharded(copy.deepcopy(plain))
    assert is_sharded(model) and not is_sharded(plain)
    held, total = held_by_this_process(model)
    assert held == total == sum(p.numel() for p in plain.parameters())  # one process: all
    with torch.no_grad():
        before = model(input_ids=IDS).logits  # leaves the root gathered: whole_adapter reshards
    with whole_adapter(model):
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and not any(isinstance(p, DTensor) for p in trainable.values())
        expected = {n: p for n, p in plain.named_parameters() if p.requires_grad}
        assert all(torch.equal(trainable[n], expected[n]) for n in expected)
        model.save_pretrained(str(tmp_path / "sharded"))
    plain.save_pretrained(str(tmp_path / "plain"))
    a = load_file(tmp_path / "sharded" / "adapter_model.safetensors")
    b = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert is_sharded(model)  # the shards are back, and the model computes as before
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, before)


def test_the_optimizer_state_is_gathered_whole_and_split_back(world_of_one):
    from torch.distributed.tensor import DTensor

    plain = lora_llama()
    model = sharded(copy.deepcopy(plain))
    optimizer, reference = train_step(model), train_step(plain)
    whole = whole_optimizer_state(optimizer)
    expected = reference.state_dict()
    for index, values in expected["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert not isinstance(whole["state"][index][key], DTensor)
            assert torch.allclose(whole["state"][index][key], values[key], atol=1e-7)
    # the optimizer's own state is untouched (still its shards)
    assert all(isinstance(s["exp_avg"], DTensor) for s in optimizer.state.values())
    fresh = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    load_optimizer_state(fresh, whole)
    for index, values in fresh.state_dict()["state"].items():
        assert isinstance(values["exp_avg"], DTensor)
        assert torch.equal(values["exp_avg"].full_tensor(), whole["state"][index]["exp_avg"])


def test_fsdp_refuses_what_it_cannot_shard_naming_it(tmp_path, tiny_bloom_dir, registry):
    from peft import LoHaConfig, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def wrapped(config):
        base = AutoModelForCausalLM.from_pretrained(str(tiny_bloom_dir))
        return get_peft_model(base, config)

    lora = wrapped(LoraConfig(r=4, target_modules=["query_key_value"]))
    plain = resolve_plugins(load_recipe(recipe_file(tmp_path, tiny_bloom_dir)))
    assert refusals(plain, lora) == []
    adalora = resolve_plugins(
        load_recipe(method_recipe(tmp_path, tiny_bloom_dir, "adalora", "", steps=20))
    )
    assert any('"adalora"' in r and "every step" in r for r in refusals(adalora, lora))
    loha = wrapped(LoHaConfig(r=4, module_dropout=0.5, target_modules=["query_key_value"]))
    assert any("module_dropout" in r for r in refusals(plain, loha))
    callbacks = '\n[callbacks.early-stopping]\nmetric = "tag_f1"\n'
    scored = resolve_plugins(
        load_recipe(recipe_file(tmp_path, tiny_bloom_dir, extra=callbacks, name="s.toml"))
    )
    assert any('metric = "tag_f1"' in r for r in refusals(scored, lora))
