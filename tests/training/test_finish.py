"""What a finished run writes: the output dir, its manifest, an adapter plain peft loads."""

from __future__ import annotations

import json

import pytest
import torch

import adaptool
from adaptool.recipe import load_recipe
from tests.helpers import (
    DATA,
    recipe_file,
    records,
    run,
)


def test_output_dir_holds_everything_and_the_manifest_is_true(tmp_path, tiny_bloom_dir, registry):
    result = run(tmp_path, tiny_bloom_dir, steps=8)
    out = result.output_dir
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "recipe.toml",
        "metrics.jsonl",
        "loss.png",
        "adaptool.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp")) and not (out / ".final.tmp").exists()
    manifest = json.loads((out / "adaptool.json").read_text())
    assert manifest["base_model"]["name"] == str(tiny_bloom_dir)
    assert manifest["base_model"]["content_hash"].startswith("sha256:")
    assert manifest["quantization"]["backend"] == "none"
    assert manifest["peft"]["method"] == "lora" and manifest["peft"]["r"] == 8
    # all-linear on 2 layers: query_key_value, dense, dense_h_to_4h, dense_4h_to_h
    per_layer = (64 + 192) + (64 + 64) + (64 + 256) + (256 + 64)
    assert manifest["peft"]["trainable_params"] == 2 * 8 * per_layer
    assert manifest["data"]["source"] == str(DATA / "quotes.jsonl")
    assert (
        manifest["data"]["rows"],
        manifest["data"]["train_rows"],
        manifest["data"]["eval_rows"],
    ) == (8, 6, 2)
    assert len(manifest["data"]["fingerprint"]) == 16
    assert manifest["formatter"] == {
        "name": "quote-tags",
        "version": "1",
        "options": {"quote_column": "quote", "tags_column": "tags", "separator": " ->: "},
        "distribution": "adaptool",
        "distribution_version": adaptool.__version__,
    }
    assert manifest["peft"]["distribution"] == manifest["quantization"]["distribution"]
    assert manifest["seed"] == 7 and manifest["training"]["steps"] == 8
    assert manifest["libraries"]["torch"] == torch.__version__
    assert manifest["results"]["train_loss"] == records(out)[-1]["loss"]
    assert manifest["results"]["eval_loss"] == result.eval_loss
    assert manifest["results"]["wall_time_s"] > 0
    assert manifest["recipe"]["path"] == str(tmp_path / "r.toml")
    # the resolved recipe reloads to the same settings
    again = load_recipe(out / "recipe.toml")
    assert again.training.max_steps == 8 and again.model.name == str(tiny_bloom_dir)


def test_adapter_loads_with_plain_peft_and_matches_adaptool(tmp_path, tiny_bloom_dir, registry):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptool.artifacts.loading import open_target

    result = run(tmp_path, tiny_bloom_dir, steps=6)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_bloom_dir), dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(result.output_dir)).eval()
    ours = open_target(result.output_dir).model
    ids = torch.tensor([[5, 17, 33, 9, 100, 41]])
    with torch.no_grad():
        a, b = plain(ids).logits, ours(ids).logits
        with plain.disable_adapter():
            base_logits = plain(ids).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, base_logits)  # the adapter does something


def test_a_half_saved_output_is_refused_by_every_command(
    tmp_path, tiny_bloom_dir, plugins, monkeypatch
):
    """The final save dies after the adapter files moved in, before adaptool.json: generate,
    merge and push must not take the folder for a finished adapter."""
    from typer.testing import CliRunner

    import adaptool.training.finish as finish
    from adaptool import AdapterError
    from adaptool.cli import build_app
    from adaptool.hub.push import push
    from adaptool.merging.merge import merge
    from adaptool.recipe import load_recipe
    from adaptool.training.run import train

    def full_disk(folder, manifest):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(finish, "write_manifest", full_disk)
    recipe = load_recipe(recipe_file(tmp_path, tiny_bloom_dir, steps=2))
    with pytest.raises(OSError):
        train(recipe)
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and not (out / "adaptool.json").exists()
    result = CliRunner().invoke(build_app(plugins), ["generate", str(out), "Be yourself."])
    assert result.exit_code == 2 and "has not finished writing" in result.output
    with pytest.raises(AdapterError, match="has not finished writing"):
        merge(out, output=tmp_path / "m")
    with pytest.raises(AdapterError, match="has not finished writing"):
        push(out, "alice/never")
