"""The provenance manifest: a typed round trip, format-1 manifests read, unknown keys kept,
the builder, reading and writing adaptool.json, the accessors, and the content hashes."""

from __future__ import annotations

import json

import pytest
import torch

from adaptool.artifacts.layout import Kind
from adaptool.artifacts.manifest import (
    FORMAT_VERSION,
    BaseModelRecord,
    Manifest,
    PeftRecord,
    PluginRecord,
    content_hash,
    file_sha256,
    new_manifest,
    read_manifest,
    write_manifest,
)
from adaptool.errors import AdapterError


def adapter_manifest() -> Manifest:
    return Manifest(
        kind=Kind.ADAPTER,
        base_model=BaseModelRecord(
            name="/models/base", dtype="float32", content_hash="sha256:ab", model_type="bloom"
        ),
        created="2024-01-02T03:04:05+00:00",
        quantization=PluginRecord("bnb-4bit", "1", {"quant_type": "nf4", "double_quant": True}),
        peft=PeftRecord(method="lora", version="1", r=8, alpha=16.0, target_modules=["a", "b"]),
        formatter=PluginRecord("quote-tags", "2", {"separator": " ->: "}),
        seed=7,
        results={"eval_loss": 1.5},
        samples=[{"prompt": "p", "completion": "c"}],
    )


def test_to_dict_from_dict_round_trips_with_typed_records():
    manifest = adapter_manifest()
    data = manifest.to_dict()
    assert data["kind"] == "adapter"
    assert data["format"] == FORMAT_VERSION == 2
    assert data["quantization"] == {
        "backend": "bnb-4bit",
        "version": "1",
        "options": {"quant_type": "nf4", "double_quant": True},
    }
    assert "adapter" not in data and "extra" not in data  # None sections and extras left out
    back = Manifest.from_dict(json.loads(json.dumps(data)))
    assert back == manifest
    assert isinstance(back.kind, Kind)
    assert isinstance(back.base_model, BaseModelRecord)
    assert isinstance(back.quantization, PluginRecord)
    assert isinstance(back.formatter, PluginRecord)
    assert isinstance(back.peft, PeftRecord)
    assert back.to_dict() == data


def test_a_format_1_manifest_with_quantization_options_inline():
    data = {
        "kind": "adapter",
        "format": 1,
        "base_model": {"name": "org/base"},
        "quantization": {"backend": "bnb-4bit", "quant_type": "nf4", "version": "1"},
    }
    manifest = Manifest.from_dict(data)
    assert manifest.quantization == PluginRecord("bnb-4bit", "1", {"quant_type": "nf4"})
    assert manifest.backend == "bnb-4bit"
    assert manifest.format == 1
    assert manifest.to_dict()["quantization"]["options"] == {"quant_type": "nf4"}


def test_unknown_keys_are_kept_and_written_back():
    data = adapter_manifest().to_dict() | {"future_section": {"x": [1, 2]}, "note": "hi"}
    data["base_model"] = {**data["base_model"], "shard_count": 3}  # unknown record key
    manifest = Manifest.from_dict(data)
    assert manifest.extra == {"future_section": {"x": [1, 2]}, "note": "hi"}
    assert manifest.to_dict()["future_section"] == {"x": [1, 2]}
    assert manifest.to_dict()["note"] == "hi"
    assert manifest.base_model.name == "/models/base"


def test_a_manifest_without_a_kind_is_an_adapter_and_missing_records_are_none():
    manifest = Manifest.from_dict({"base_model": {"name": "b"}})
    assert manifest.kind is Kind.ADAPTER
    assert manifest.quantization is None and manifest.peft is None
    assert manifest.backend == "none"
    assert manifest.method is None


def test_new_manifest_stamps_time_format_and_library_versions():
    manifest = new_manifest(Kind.MERGED, BaseModelRecord(name="b"), seed=3)
    assert manifest.kind is Kind.MERGED
    assert manifest.seed == 3
    assert manifest.format == 2
    assert manifest.created[:4].isdigit() and manifest.created.endswith("+00:00")
    libraries = manifest.libraries
    assert libraries["torch"] == torch.__version__
    assert set(libraries) >= {"adaptool", "python", "torch", "transformers", "peft", "safetensors"}


def test_read_manifest_without_one_is_none(tmp_path):
    assert read_manifest(tmp_path) is None


@pytest.mark.parametrize("text", ["{not json", "[1, 2, 3]", '"a string"', '{"kind": "lora"}'])
def test_read_manifest_refuses_what_is_not_a_manifest(tmp_path, text):
    (tmp_path / "adaptool.json").write_text(text, encoding="utf-8")
    with pytest.raises(AdapterError) as exc:
        read_manifest(tmp_path)
    assert str(tmp_path / "adaptool.json") in str(exc.value)
    assert "not a readable adaptool manifest" in str(exc.value)


def test_write_manifest_writes_atomically_and_reads_back(tmp_path):
    manifest = adapter_manifest()
    write_manifest(tmp_path, manifest)
    write_manifest(tmp_path, manifest)  # over an existing one
    assert [p.name for p in tmp_path.iterdir()] == ["adaptool.json"]  # no .tmp left
    assert read_manifest(tmp_path) == manifest
    text = (tmp_path / "adaptool.json").read_text(encoding="utf-8")
    assert json.loads(text) == manifest.to_dict()


def merged_manifest() -> Manifest:
    inner = adapter_manifest().to_dict()
    return Manifest(
        kind=Kind.MERGED,
        base_model=BaseModelRecord(name="/models/base-copy", dtype="bfloat16"),
        adapter={"path": "/runs/a", "peft_type": "PeftType.LORA", "manifest": inner},
    )


def test_method_of_a_merged_manifest_comes_from_its_adapters_peft_type():
    merged = merged_manifest()
    assert merged.peft is None
    assert merged.method == "lora"
    plain = Manifest(
        kind=Kind.MERGED, base_model=BaseModelRecord("b"), adapter={"peft_type": "IA3"}
    )
    assert plain.method == "ia3"
    assert adapter_manifest().method == "lora"


def test_trained_base_of_a_merged_manifest_is_its_adapters_base():
    merged = merged_manifest()
    assert merged.trained_base == adapter_manifest().base_model
    assert merged.trained_base.name == "/models/base"
    assert merged.adapter_manifest() == adapter_manifest()
    adapter = adapter_manifest()
    assert adapter.trained_base is adapter.base_model
    assert adapter.adapter_manifest() is None


def test_base_identity_precedence():
    assert BaseModelRecord("n", content_hash="sha256:x", commit="c").identity == "sha256:x"
    assert BaseModelRecord("n", commit="c").identity == "c"
    assert BaseModelRecord("n").identity == "n"


def test_content_hash_covers_weights_and_config_only(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    first = content_hash(tmp_path)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert content_hash(tmp_path) == first
    (tmp_path / "README.md").write_text("notes")  # neither weights nor config
    (tmp_path / "tokenizer.json").write_text("{}")
    assert content_hash(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 99 + b"\x01")
    changed = content_hash(tmp_path)
    assert changed != first
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    assert content_hash(tmp_path) == first
    (tmp_path / "model.safetensors").rename(tmp_path / "other.safetensors")
    assert content_hash(tmp_path) != first  # names count too


def test_file_sha256(tmp_path):
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    assert file_sha256(path) == file_sha256(path)
    path.write_bytes(b"abd")
    assert file_sha256(path) == hashlib.sha256(b"abd").hexdigest()


@pytest.mark.parametrize(
    "text",
    [
        '"a string"',
        "[1, 2]",
        '{"kind": "adapter", "base_model": "bloom"}',
        '{"kind": "adapter", "base_model": {"name": "b"}, "formatter": ["text"]}',
        '{"kind": "adapter", "base_model": {"name": "b"}, "peft": "lora"}',
        '{"kind": "spaceship", "base_model": {"name": "b"}}',
    ],
    ids=["string", "list", "base-a-string", "formatter-a-list", "peft-a-string", "bad-kind"],
)
def test_a_manifest_of_the_wrong_json_type_is_an_adapter_error(tmp_path, text):
    (tmp_path / "adaptool.json").write_text(text)
    with pytest.raises(AdapterError, match="is not a readable adaptool manifest"):
        read_manifest(tmp_path)
