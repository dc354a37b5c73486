"""adaptool: train, merge, share and run parameter-efficient adapters for causal LMs.

The public API for plugin authors: ``hookimpl`` and the base classes ``Formatter``,
``Quantizer``, ``PeftMethod`` (with ``Options`` and ``Example``), and the errors.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from adaptool.base import Example, Formatter, Options, PeftMethod, Plugin, Quantizer
from adaptool.errors import (
    AdapterError,
    AdaptoolError,
    DataError,
    HubError,
    ModelError,
    PluginError,
    RecipeError,
    RecipeProblem,
)
from adaptool.hookspecs import hookimpl

try:
    __version__ = version("adaptool")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AdapterError",
    "AdaptoolError",
    "DataError",
    "Example",
    "Formatter",
    "HubError",
    "ModelError",
    "Options",
    "PeftMethod",
    "Plugin",
    "PluginError",
    "Quantizer",
    "RecipeError",
    "RecipeProblem",
    "__version__",
    "hookimpl",
]
