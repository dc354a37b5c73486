"""Shared fixtures: tiny tokenizers and models built locally, fresh plugin sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptool.plugins import load_plugins, reset_plugins, use_plugins
from adaptool.recipe import load_recipe
from adaptool.testing import make_tiny_bloom, make_tokenizer
from adaptool.training.run import train
from tests.helpers import (
    DATA,
    GOOD,
    OTHER,
    corpus,
    recipe_file,
    recipe_text,
    trained,
    write_recipe,
)
from tests.hubserver import HubServer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer with EOS and a chat template, saved to a folder."""
    path = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(path, corpus(), vocab_size=400)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_bloom_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A tiny random BLOOM (hidden 64, 2 layers) saved with its tokenizer."""
    path = tmp_path_factory.mktemp("tiny-bloom")
    make_tiny_bloom(path, tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A tiny random Llama (hidden 64, 2 layers, grouped-query attention) with its tokenizer:
    an architecture packing is exact on."""
    from adaptool.testing import make_tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(path, tokenizer)
    return path


@pytest.fixture
def plugins():
    """A fresh plugin set with the built-ins only (installed plugins are not loaded), made the
    process-wide one for the test."""
    fresh = load_plugins(entry_points=False, strict=False, disabled=[])
    use_plugins(fresh)
    return fresh


@pytest.fixture
def registry(plugins):
    return plugins.registry


@pytest.fixture(autouse=True)
def _fresh_process_plugins(monkeypatch: pytest.MonkeyPatch, tmp_path_factory):
    """Every test starts without a cached process-wide plugin set and without plugin env vars,
    with its own ADAPTOOL_HOME (never the user's index of adapters)."""
    monkeypatch.setenv("ADAPTOOL_HOME", str(tmp_path_factory.mktemp("adaptool-home")))
    monkeypatch.delenv("ADAPTOOL_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("ADAPTOOL_DISABLE_PLUGINS", raising=False)
    reset_plugins()
    yield
    reset_plugins()


@pytest.fixture
def two_adapters(tmp_path, tiny_bloom_dir, registry):
    a = trained(tmp_path, tiny_bloom_dir, name="a")
    b = trained(
        tmp_path,
        tiny_bloom_dir,
        name="b",
        extra=("training.seed=99", "data.train_on_prompt=true"),
    )
    return a, b


@pytest.fixture
def hub():
    with HubServer(tokens={GOOD: "alice", OTHER: "bob"}) as server:
        yield server
    assert server.errors == []


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_bloom_dir):
    """A LoRA adapter trained by adaptool (6 steps) on the tiny local BLOOM."""
    use_plugins(load_plugins(entry_points=False, strict=False, disabled=[]))
    return trained(tmp_path_factory.mktemp("trained"), tiny_bloom_dir)


@pytest.fixture
def quotes_recipe(tmp_path, tokenizer_dir):
    return write_recipe(tmp_path, recipe_text(str(tokenizer_dir), str(DATA / "quotes.jsonl")))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_bloom_dir):
    from adaptool.plugins import load_plugins, use_plugins

    use_plugins(load_plugins(entry_points=False))
    tmp = tmp_path_factory.mktemp("adapter")
    path = recipe_file(tmp, tiny_bloom_dir, steps=30)
    return train(load_recipe(path)).output_dir
