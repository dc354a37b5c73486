"""Which method plugin made an adapter, and how it is described."""

from __future__ import annotations

import json
import shutil

import pytest

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.method import describe_method, format_hyperparameters, recorded_method
from adaptool.errors import PluginError


def plain_adapter(tmp_path, model, config):
    """An adapter saved by plain peft (no adaptool manifest)."""
    from peft import get_peft_model

    folder = tmp_path / "plain"
    get_peft_model(model, config).save_pretrained(str(folder))
    return Artifact.read(folder)


def test_a_plain_peft_adapter_finds_its_method_by_peft_type(tmp_path, plugins, tiny_bloom_dir):
    from peft import LNTuningConfig
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_bloom_dir))
    artifact = plain_adapter(tmp_path, model, LNTuningConfig(task_type="CAUSAL_LM"))
    assert recorded_method(artifact).name == "ln-tuning"  # peft says LN_TUNING
    assert describe_method(artifact.method, artifact.config)[0] == "LN tuning"


def test_the_manifest_names_the_method_and_its_options(adapter, plugins):
    method = recorded_method(Artifact.read(adapter))
    assert method.name == "lora" and method.options.init == "default"


def test_an_unknown_peft_type_names_it(tmp_path, adapter, plugins):
    folder = tmp_path / "odd"
    folder.mkdir()
    config = json.loads((adapter / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"peft_type": "NOPE"}))
    shutil.copy(adapter / "adapter_model.safetensors", folder)
    with pytest.raises(PluginError, match="no installed PEFT method plugin handles peft type"):
        recorded_method(Artifact.read(folder))


@pytest.mark.parametrize(
    ("name", "config", "title", "expected"),
    [
        (
            "lora",
            {"r": 8, "lora_alpha": 16, "use_dora": True, "target_modules": ["a.q", "b.q"]},
            "LoRA",
            "r=8; alpha=16; dora=True; targets=q",
        ),
        (
            "ia3",
            {"target_modules": ["q", "ff"], "feedforward_modules": ["ff"]},
            "IA³",
            "targets=ff, q; feedforward=ff",
        ),
        ("prompt-tuning", {"num_virtual_tokens": 20}, "prompt tuning", "virtual_tokens=20"),
        ("not-installed", {}, "NOT-INSTALLED", ""),
    ],
)
def test_each_method_describes_what_matters(plugins, name, config, title, expected):
    shown, values = describe_method(name, config)
    assert shown == title and format_hyperparameters(values) == expected
