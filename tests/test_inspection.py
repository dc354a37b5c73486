"""adaptool inspect: local folders and Hub ids not pulled."""

from __future__ import annotations

import json

from tests.helpers import (
    GOOD,
    cli,
)
from tests.hubserver import hub_env


def test_inspect_a_local_adapter_and_a_hub_id_not_pulled(hub, plugins, adapter, tmp_path):
    local = cli(plugins, "inspect", adapter, "--json")
    assert local.exit_code == 0, local.output
    info = json.loads(local.output)
    from safetensors.torch import load_file

    params = sum(t.numel() for t in load_file(adapter / "adapter_model.safetensors").values())
    assert info["trainable_params"] == params
    assert info["method"] == "lora" and info["options"]["r"] == 8
    assert info["metrics"]["train_loss"] > 0 and info["quantization"] == "none"
    table = cli(plugins, "inspect", adapter)
    assert "trainable params" in table.output and "size on disk" in table.output

    with hub_env(hub, GOOD, tmp_path / "home"):
        assert cli(plugins, "push", adapter, "alice/tagger").exit_code == 0
        remote = cli(plugins, "inspect", "alice/tagger", "--json")
        assert remote.exit_code == 0, remote.output
        seen = json.loads(remote.output)
        assert seen["trainable_params"] == params
        assert seen["path"] == "alice/tagger (not pulled)"
        assert seen["source"]["sha"] == hub.commit_sha("alice/tagger")
        # inspecting pulls nothing: no weights in the cache, nothing recorded
        assert not list((tmp_path / "home").rglob("adapter_model.safetensors"))
        listed = json.loads(cli(plugins, "ls", "--json").output)
        assert not any(e["source"] == "pulled" for e in listed)


def test_inspect_a_plain_adapter_that_names_no_base(tmp_path):
    import json as _json

    import torch
    from safetensors.torch import save_file

    from adaptool.inspection import inspect_folder

    (tmp_path / "adapter_config.json").write_text(_json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({"x.lora_A.weight": torch.zeros(4, 8)}, str(tmp_path / "adapter_model.safetensors"))
    info = inspect_folder(tmp_path)
    assert info["base_model"] is None and info["method"] == "lora"
    assert info["trainable_params"] == 32
