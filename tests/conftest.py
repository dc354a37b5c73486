"""Shared fixtures: tiny tokenizers and models built locally, fresh plugin sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptool.plugins import load_plugins, reset_plugins, use_plugins
from adaptool.testing import make_tiny_bloom, make_tokenizer

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


def corpus() -> list[str]:
    texts = []
    for name in ("quotes.jsonl", "instructions.jsonl", "chat.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            texts.append(json.dumps(json.loads(line), ensure_ascii=False))
    texts.append((DATA / "text.csv").read_text(encoding="utf-8"))
    return texts * 4


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


def write_recipe(directory: Path, text: str, name: str = "recipe.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path
