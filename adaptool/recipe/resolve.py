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
    #: one formatter per data source (the first is ``formatter``)
    source_formatters: tuple[Formatter, ...] = ()

    def __iter__(self) -> Iterator[Plugin]:
        return iter(
            (
                self.formatter,
                *self.source_formatters[1:],
                self.quantizer,
                self.method,
                *self.loggers,
                *self.callbacks,
            )
        )


def resolve_plugins(recipe: Recipe) -> RecipePlugins:
    """Instantiate the recipe's plugins (a PluginError for a name not installed)."""
    create = registry().create
    formatters = tuple(
        create("formatter", source.formatter, source.options) for source in recipe.data.all_sources
    )
    return RecipePlugins(
        formatter=formatters[0],
        source_formatters=formatters,
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
