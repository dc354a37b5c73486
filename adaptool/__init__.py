"""adaptool: train, merge, share and run parameter-efficient adapters for causal LMs.

The public API for plugin authors: ``hookimpl`` and the base classes ``Formatter``,
``Quantizer``, ``PeftMethod``, ``Logger`` and ``Callback`` (with ``Options``, ``Example``,
``RunInfo``, ``LayerToFold`` and ``TrainingContext``), and the errors. docs/plugins.md has
every hook and method.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from adaptool.base import (
    Callback,
    ChatOptions,
    ChatTemplateFormatter,
    Example,
    Formatter,
    LayerToFold,
    Logger,
    Options,
    PeftMethod,
    Plugin,
    Quantizer,
    RunInfo,
    TrainingContext,
)
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
    "Callback",
    "ChatOptions",
    "ChatTemplateFormatter",
    "DataError",
    "Example",
    "Formatter",
    "HubError",
    "LayerToFold",
    "Logger",
    "ModelError",
    "Options",
    "PeftMethod",
    "Plugin",
    "PluginError",
    "Quantizer",
    "RecipeError",
    "RecipeProblem",
    "RunInfo",
    "TrainingContext",
    "__version__",
    "hookimpl",
]
