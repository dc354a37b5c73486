"""adaptool's pytest plugin (the ``pytest11`` entry point ``adaptool``): fixtures for a plugin
package's own tests, active wherever adaptool is installed.

- ``adaptool_plugins(*plugins)``: a fresh plugin set — adaptool's built-ins plus the given
  plugin modules (or objects with ``@adaptool.hookimpl`` functions) — made the process-wide
  one for the test; installed plugins are not loaded unless ``entry_points=True``;
- ``adaptool_tokenizer``: a tiny byte-level BPE tokenizer with EOS and a chat template;
- ``adaptool_model_dir``: a tiny random BLOOM (non-zero biases) saved with that tokenizer;
- ``adaptool_cli(*args)``: runs the ``adaptool`` command line in-process over the current
  plugin set and returns Click's result (``exit_code``, ``output``).

Every fixture is named ``adaptool_*`` so none shadows a fixture of the project using it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a small model for plugin tests, built on the spot",
    '{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}',
] * 8


@pytest.fixture
def adaptool_plugins() -> Iterator[Callable[..., Any]]:
    from adaptool import plugins as loader

    previous = loader._default

    def make(*extra: object, entry_points: bool = False) -> Any:
        fresh = loader.load_plugins(
            entry_points=entry_points, strict=True, disabled=[], extra=extra
        )
        loader.use_plugins(fresh)
        return fresh

    yield make
    loader._default = previous


@pytest.fixture(scope="session")
def adaptool_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from adaptool.testing import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("adaptool-tokenizer"), CORPUS, vocab_size=320)


@pytest.fixture(scope="session")
def adaptool_model_dir(tmp_path_factory: pytest.TempPathFactory, adaptool_tokenizer: Any) -> Path:
    from adaptool.testing import make_tiny_bloom

    path = tmp_path_factory.mktemp("adaptool-tiny-bloom")
    make_tiny_bloom(path, adaptool_tokenizer)
    return path


@pytest.fixture
def adaptool_cli() -> Callable[..., Any]:
    from typer.testing import CliRunner

    from adaptool.cli import build_app
    from adaptool.plugins import get_plugins

    def run(*args: object) -> Any:
        return CliRunner().invoke(build_app(get_plugins()), [str(a) for a in args])

    return run
