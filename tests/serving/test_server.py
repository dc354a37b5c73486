"""Setting a server up: names for the adapters, one base and one quantization for all."""

from __future__ import annotations

import pytest

from adaptool.errors import AdapterError, AdaptoolError
from adaptool.serving.server import open_engine, parse_adapters
from tests.helpers import trained


def test_adapters_are_named_after_their_folders_or_as_told():
    pairs = parse_adapters(["runs/tagger", "org/repo@v1"], ["mine=runs/other"])
    assert pairs == [("tagger", "runs/tagger"), ("repo", "org/repo@v1"), ("mine", "runs/other")]
    assert parse_adapters(["runs/qwen2.5-tagger"], []) == [
        ("qwen2-5-tagger", "runs/qwen2.5-tagger")
    ]
    with pytest.raises(AdaptoolError, match="two adapters are named"):
        parse_adapters(["runs/tagger", "other/tagger"], [])
    with pytest.raises(AdaptoolError, match="NAME=DIR_OR_HUB_ID"):
        parse_adapters([], ["no-equals-sign"])


def test_one_server_holds_one_base_and_one_quantization(tmp_path, tiny_bloom_dir, registry):
    with pytest.raises(AdaptoolError, match="nothing to serve"):
        open_engine([])
    plain = trained(tmp_path, tiny_bloom_dir, name="plain")
    packed = trained(tmp_path, tiny_bloom_dir, name="packed", backend="bnb-4bit")
    with pytest.raises(AdapterError, match="differently quantized") as mixed:
        open_engine([("plain", str(plain)), ("packed", str(packed))])
    assert "plain: none" in str(mixed.value) and "packed: bnb-4bit" in str(mixed.value)
    engine = open_engine([("plain", str(plain)), ("packed", str(packed))], quantization="none")
    assert set(engine.adapters) == {"plain", "packed"} and engine.base_id == tiny_bloom_dir.name
    alone = open_engine([], base=str(tiny_bloom_dir))
    assert alone.adapters == {} and alone.base_id == tiny_bloom_dir.name
