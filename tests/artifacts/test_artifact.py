"""Artifact.read on plain peft adapter dirs and merged dirs: which base (override > manifest >
adapter config), base_model(), method and backend without a manifest, broken configs, and the
dirs it refuses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.layout import Kind
from adaptool.artifacts.manifest import BaseModelRecord, Manifest, PluginRecord, write_manifest
from adaptool.errors import AdapterError


def write_weights(path) -> None:
    save_file({"lora_A": torch.zeros(2, 4), "lora_B": torch.ones(4, 2)}, str(path))


def peft_adapter(folder, config: dict | None = None, *, weights: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    if config is None:
        config = {"peft_type": "LORA", "base_model_name_or_path": "org/peft-base", "r": 4}
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    if weights:
        write_weights(folder / "adapter_model.safetensors")
    return folder


def merged_model(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bloom"}), encoding="utf-8")
    write_weights(folder / "model.safetensors")
    return folder


def with_manifest(folder, **kw):
    base = BaseModelRecord(name="/models/recorded", revision="abc123", dtype="bfloat16")
    write_manifest(folder, Manifest(kind=Kind.ADAPTER, base_model=base, **kw))
    return folder


def test_a_plain_peft_adapter(tmp_path):
    artifact = Artifact.read(peft_adapter(tmp_path / "a"))
    assert artifact.kind is Kind.ADAPTER
    assert artifact.manifest is None
    assert artifact.config["r"] == 4
    assert artifact.method == "lora"
    assert artifact.backend == "none"
    assert artifact.base_name() == "org/peft-base"
    assert artifact.base_model() == BaseModelRecord(name="org/peft-base")
    assert not artifact.has_tokenizer
    assert artifact.recipe_file is None
    assert artifact.describe() == f"{tmp_path / 'a'} (adapter, no adaptool manifest)"


def test_base_name_precedence_override_then_manifest_then_peft_config(tmp_path):
    folder = with_manifest(peft_adapter(tmp_path / "a"))
    artifact = Artifact.read(folder)
    assert artifact.base_name("/my/copy") == "/my/copy"
    assert artifact.base_name() == "/models/recorded"
    plain = Artifact.read(peft_adapter(tmp_path / "b"))
    assert plain.base_name("/my/copy") == "/my/copy"
    assert plain.base_name() == "org/peft-base"


def test_no_base_anywhere_asks_for_the_base_parameter(tmp_path):
    folder = peft_adapter(tmp_path / "a", {"peft_type": "LORA", "base_model_name_or_path": None})
    artifact = Artifact.read(folder)
    with pytest.raises(AdapterError) as exc:
        artifact.base_name()
    assert str(exc.value) == (f"{folder} does not say which base model it adapts; pass base=....")
    assert exc.value.render({"base": "--base"}).endswith("pass --base.")
    with pytest.raises(AdapterError):
        artifact.base_model()
    assert artifact.base_model("/b").name == "/b"


def test_a_merged_model_does_not_take_its_base_from_config(tmp_path):
    folder = merged_model(tmp_path / "m")
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bloom", "base_model_name_or_path": "org/x"})
    )
    artifact = Artifact.read(folder)
    assert artifact.kind is Kind.MERGED
    with pytest.raises(AdapterError, match="does not say which base model"):
        artifact.base_name()


def test_base_model_is_the_recorded_one_and_an_override_keeps_only_the_dtype(tmp_path):
    artifact = Artifact.read(with_manifest(peft_adapter(tmp_path / "a")))
    recorded = artifact.base_model()
    assert recorded == BaseModelRecord(name="/models/recorded", revision="abc123", dtype="bfloat16")
    # another copy of the base: loaded as trained (the recorded dtype), but the recorded
    # revision belongs to the recorded copy
    assert artifact.base_model("/my/copy") == BaseModelRecord(name="/my/copy", dtype="bfloat16")


def test_method_and_backend_from_the_manifest(tmp_path):
    folder = with_manifest(
        peft_adapter(tmp_path / "a", {"peft_type": "IA3", "base_model_name_or_path": "b"}),
        quantization=PluginRecord("bnb-4bit", "1", {}),
    )
    artifact = Artifact.read(folder)
    assert artifact.backend == "bnb-4bit"
    assert artifact.method == "ia3"  # no peft record: the config's type
    assert artifact.describe().endswith("(adapter, adaptool.json)")


def test_a_broken_adapter_config_is_reported_even_without_weights(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(AdapterError) as exc:
        Artifact.read(folder)
    assert "not a valid peft adapter config" in str(exc.value)
    assert str(folder / "adapter_config.json") in str(exc.value)


@pytest.mark.parametrize("config", ['{"r": 4}', "[1, 2]"])
def test_an_adapter_config_without_peft_type_is_not_valid(tmp_path, config):
    folder = peft_adapter(tmp_path / "a")
    (folder / "adapter_config.json").write_text(config, encoding="utf-8")
    with pytest.raises(AdapterError, match="not a valid peft adapter config"):
        Artifact.read(folder)


def test_a_broken_model_config_is_not_a_valid_model_config(tmp_path):
    folder = merged_model(tmp_path / "m")
    (folder / "config.json").write_text("nope", encoding="utf-8")
    with pytest.raises(AdapterError, match="not a valid model config"):
        Artifact.read(folder)


def test_expect_adapter_refuses_a_merged_dir(tmp_path):
    folder = merged_model(tmp_path / "m")
    assert Artifact.read(folder).kind is Kind.MERGED
    assert Artifact.read(folder, expect=Kind.MERGED).kind is Kind.MERGED
    with pytest.raises(AdapterError) as exc:
        Artifact.read(folder, expect=Kind.ADAPTER)
    assert str(exc.value) == f"{folder} is a merged model dir, not an adapter dir."


def test_a_path_that_is_not_a_directory_is_refused(tmp_path):
    file = tmp_path / "adapter_model.safetensors"
    write_weights(file)
    with pytest.raises(AdapterError) as exc:
        Artifact.read(file, expect=Kind.ADAPTER)
    assert str(exc.value).startswith(f"{file} is not a directory; give an adapter dir")
    with pytest.raises(AdapterError, match="give an adapter or a merged model dir"):
        Artifact.read(tmp_path / "missing")


def test_a_tokenizer_and_recipe_are_found(tmp_path):
    folder = peft_adapter(tmp_path / "a")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "recipe.toml").write_text("")
    artifact = Artifact.read(folder)
    assert artifact.has_tokenizer
    assert artifact.recipe_file == folder / "recipe.toml"
