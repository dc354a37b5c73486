"""What a plugin's command reaches of adaptool: the ``context`` of ``register_commands``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adaptool.plugins import PluginSet
    from adaptool.registry import Registry


class CommandContext:
    """What a plugin's command reaches of adaptool (``register_commands(app, context)``): the
    registry its plugins are in, and recipes, data and adapters loaded as adaptool's own
    commands load them. Each function imports its part of adaptool when called."""

    def __init__(self, plugins: PluginSet) -> None:
        self.plugins = plugins

    @property
    def registry(self) -> Registry:
        return self.plugins.registry

    def load_recipe(self, path: str | os.PathLike, overrides: Iterable[str] = ()) -> Any:
        """A validated :class:`~adaptool.recipe.Recipe` (``overrides``: ``--set`` strings)."""
        from adaptool.recipe import load_recipe

        return load_recipe(path, list(overrides))

    def resolve_plugins(self, recipe: Any) -> Any:
        """The recipe's formatter, quantizer, method, loggers and callbacks, instantiated."""
        from adaptool.recipe.resolve import resolve_plugins

        return resolve_plugins(recipe)

    def load_rows(self, recipe: Any) -> Any:
        """The recipe's data as a ``datasets.Dataset`` (local file or Hub dataset)."""
        from adaptool.data import load_rows

        return load_rows(recipe.data)

    def open(self, target: str, *, base: str | None = None) -> Any:
        """An adapter or merged model (a folder or a Hub id, pulled when needed) loaded to run:
        an :class:`~adaptool.artifacts.loading.Target` with model, tokenizer and formatter."""
        from adaptool.artifacts.loading import open_target
        from adaptool.hub.locate import locate

        return open_target(locate(target).path, base=base)
