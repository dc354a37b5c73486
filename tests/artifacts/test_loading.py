"""Opening adapters and merged models: refusals, plugins re-created as recorded."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adaptool import AdapterError
from adaptool.artifacts.loading import open_target
from adaptool.cli import build_app


def test_targets_that_cannot_be_opened(tmp_path, registry, plugins):
    with pytest.raises(AdapterError, match="not a directory"):
        open_target(tmp_path / "nope")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(AdapterError, match="only pickle weights"):
        open_target(pickled)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    result = CliRunner().invoke(build_app(plugins), ["generate", str(broken), "hi"])
    assert result.exit_code == 2 and "not a valid peft adapter config" in result.output
