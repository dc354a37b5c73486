"""A recipe's plugins, resolved once: the chosen formatter, quantizer and PEFT method,
instantiated with their validated options from the process-wide registry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adaptool.plugins import registry

if TYPE_CHECKING:
    from adaptool.base import Callback, Formatter, Logger, PeftMethod, Plugin, Quantizer
    from adaptool.recipe.schema import Recipe


@dataclass(frozen=True)
class RecipePlugins:
    """The plugins a recipe names, ready to use."""

    formatter: Formatter
    quantizer: Quantizer
    method: PeftMethod
    loggers: tuple[Logger, ...] = ()
    callbacks: tuple[Callback, ...] = ()

    def __iter__(self) -> Iterator[Plugin]:
        return iter((self.formatter, self.quantizer, self.method, *self.loggers, *self.callbacks))


def resolve_plugins(recipe: Recipe) -> RecipePlugins:
    """Instantiate the recipe's plugins (a PluginError for a name not installed)."""
    create = registry().create
    return RecipePlugins(
        formatter=create("formatter", recipe.data.formatter, recipe.data.options),
        quantizer=create("quantizer", recipe.quantization.backend, recipe.quantization.options),
        method=create("peft-method", recipe.peft.method, recipe.peft.options),
        loggers=tuple(
            create("logger", name, recipe.logging.options.get(name, {}))
            for name in recipe.logging.to
        ),
        callbacks=tuple(
            create("callback", name, options) for name, options in recipe.callbacks.options.items()
        ),
    )
