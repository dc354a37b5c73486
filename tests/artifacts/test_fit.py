"""Does an adapter fit a base: checked on the meta device."""

from __future__ import annotations

import json

from tests.helpers import (
    GOOD,
    cli,
)
from tests.hubserver import hub_env


def test_incompatible_or_unreachable_base_is_refused(hub, plugins, adapter, tokenizer, tmp_path):
    from adaptool.testing import make_tiny_bloom

    other = tmp_path / "wider"
    make_tiny_bloom(other, tokenizer, hidden_size=96)
    with hub_env(hub, GOOD, tmp_path / "home"):
        assert cli(plugins, "push", adapter, "alice/tagger").exit_code == 0
        out = tmp_path / "p"
        wrong = cli(plugins, "pull", "alice/tagger", "--base", other, "--output", out)
        assert wrong.exit_code == 2, wrong.output
        assert f"does not fit the base '{other}'" in wrong.output
        assert "the base needs" in wrong.output and "--base" in wrong.output
        assert not out.exists() and not list(tmp_path.glob(".p.*"))

        config = json.loads((adapter / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "bigscience/bloom-7b1"
        files = {
            "adapter_config.json": json.dumps(config).encode(),
            "adapter_model.safetensors": (adapter / "adapter_model.safetensors").read_bytes(),
        }
        hub.put_files("alice/far", files)
        far = cli(plugins, "pull", "alice/far")
        assert far.exit_code == 2
        assert "the base model 'bigscience/bloom-7b1'" in far.output
        assert "Pass --base" in far.output
        nowhere = adapter.parent.parent / "none"
        fixed = cli(plugins, "pull", "alice/far", "--base", nowhere)
        assert fixed.exit_code == 2  # a folder that does not exist is no base either
        assert f"the base model '{nowhere}'" in fixed.output
