"""The layout: classify() on listings of file names (adapter, merged model, and each way of
being neither), the name helpers, and the same answer for a local folder and a Hub listing."""

from __future__ import annotations

import json

import pytest

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.layout import Kind, classify, matches, pickled, top_level
from adaptool.errors import AdapterError

ADAPTER = ["adapter_config.json", "adapter_model.safetensors", "adaptool.json", "README.md"]
MERGED = [
    "config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
]


@pytest.mark.parametrize(
    ("names", "kind"),
    [
        (["adapter_config.json", "adapter_model.safetensors"], Kind.ADAPTER),
        (ADAPTER, Kind.ADAPTER),
        (["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"], Kind.ADAPTER),
        (["config.json", "model.safetensors"], Kind.MERGED),
        (MERGED, Kind.MERGED),
        # an adapter config decides, even next to a model's files
        (["adapter_config.json", "adapter_model.safetensors", "config.json"], Kind.ADAPTER),
    ],
)
def test_classify(names, kind):
    assert classify(names, "here") is kind
    assert classify(iter(names), "here") is kind  # any iterable


def test_pickle_only_adapter_is_refused():
    with pytest.raises(AdapterError) as exc:
        classify(["adapter_config.json", "adapter_model.bin"], "org/repo")
    message = str(exc.value)
    assert message.startswith("org/repo holds only pickle weights (adapter_model.bin)")
    assert "safetensors" in message


def test_pickle_only_adapter_names_the_first_pickle_file():
    with pytest.raises(AdapterError, match=r"only pickle weights \(a\.pt\)"):
        classify(["adapter_config.json", "z.bin", "a.pt"], "dir")


def test_adapter_config_without_weights_is_refused():
    with pytest.raises(AdapterError) as exc:
        classify(["adapter_config.json", "README.md"], "/tmp/a")
    assert str(exc.value) == "/tmp/a has adapter_config.json but no adapter_model.safetensors."


def test_a_model_without_safetensors_is_refused():
    with pytest.raises(AdapterError) as exc:
        classify(["config.json", "pytorch_model.bin"], "org/model")
    assert str(exc.value).startswith("org/model holds a model without safetensors weights")


@pytest.mark.parametrize("names", [[], ["README.md"], ["model.safetensors", "tokenizer.json"]])
def test_neither_is_refused_naming_where(names):
    with pytest.raises(AdapterError) as exc:
        classify(names, "somewhere/else")
    assert str(exc.value).startswith("somewhere/else holds neither an adapter")


def test_matches_and_pickled():
    assert matches("model-00001-of-00002.safetensors", ["*.safetensors"])
    assert matches("README.md", ["*.json", "README.md"])
    assert not matches("README.md", ["*.json"])
    assert not matches("x", [])
    names = ["weights.pkl", "a.safetensors", "training_args.bin", "opt.pt", "m.pth", "x.json"]
    assert pickled(names) == ["m.pth", "opt.pt", "training_args.bin", "weights.pkl"]
    assert pickled(["a.safetensors"]) == []


def test_top_level_lists_files_only_sorted(tmp_path):
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "c.json").write_text("{}")
    assert top_level(tmp_path) == ["a.safetensors", "b.json"]


def write_adapter_files(folder, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "adapter_config.json":
            config = {"peft_type": "LORA", "base_model_name_or_path": "org/base"}
            (folder / name).write_text(json.dumps(config))
        elif name == "config.json":
            (folder / name).write_text(json.dumps({"model_type": "bloom"}))
        else:
            (folder / name).write_bytes(b"weights")


@pytest.mark.parametrize(
    "names",
    [
        ["adapter_config.json", "adapter_model.safetensors", "README.md"],
        ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
        ["adapter_config.json", "adapter_model.bin"],
        ["adapter_config.json"],
        ["config.json", "pytorch_model.bin"],
        ["README.md"],
    ],
)
def test_a_folder_and_a_hub_listing_of_the_same_files_classify_alike(tmp_path, names):
    full = tmp_path / "full"
    write_adapter_files(full, names)
    small = tmp_path / "small"  # what a pull fetches first: the small files only
    write_adapter_files(small, [n for n in names if n.endswith((".json", ".md"))])

    def outcome(**kw):
        try:
            return Artifact.read(**kw).kind
        except AdapterError as exc:
            return str(exc)

    local = outcome(folder=full)
    hub = outcome(folder=small, listing=names, where="org/repo")
    if isinstance(local, Kind):
        assert hub is local
        assert local is classify(names, "x")
    else:
        assert hub == local.replace(str(full), "org/repo")
        assert hub.startswith("org/repo ")
