"""The hooks a plugin implements. Each is called once per plugin, with a ``register`` callable
owned by adaptool that checks what it is given and remembers which plugin gave it.

As with any pluggy hook, an implementation names only the arguments it uses. Plugins are called
in load order (adaptool's built-ins first, then installed plugins); ``tryfirst``/``trylast``
do not change it. A name adaptool itself provides stays adaptool's; two installed plugins
claiming one name both lose it. A function marked ``@adaptool.hookimpl`` whose name is not a
hook below is reported (``optionalhook=True`` silences that).

A plugin is one module with an entry point in the ``adaptool`` group::

    # pyproject.toml of the plugin package
    [project.entry-points.adaptool]
    sharegpt = "adaptool_sharegpt"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from adaptool.base import Callback, Formatter, Logger, PeftMethod, Quantizer
    from adaptool.cli.context import CommandContext

hookspec = pluggy.HookspecMarker("adaptool")
hookimpl = pluggy.HookimplMarker("adaptool")


@hookspec
def register_formatters(register: Callable[[type[Formatter]], None]) -> None:
    """Register dataset formatters (subclasses of :class:`adaptool.Formatter`).

    Example::

        @adaptool.hookimpl
        def register_formatters(register):
            register(ShareGPT)   # ShareGPT.name == "sharegpt"; recipes use formatter = "sharegpt"
    """


@hookspec
def register_quantizers(register: Callable[[type[Quantizer]], None]) -> None:
    """Register quantization backends (subclasses of :class:`adaptool.Quantizer`).

    Example::

        @adaptool.hookimpl
        def register_quantizers(register):
            register(HQQ4bit)    # recipes use [quantization] backend = "hqq-4bit"
    """


@hookspec
def register_peft_methods(register: Callable[[type[PeftMethod]], None]) -> None:
    """Register PEFT methods (subclasses of :class:`adaptool.PeftMethod`).

    Example::

        @adaptool.hookimpl
        def register_peft_methods(register):
            register(IA3)        # recipes use [peft] method = "ia3"
    """


@hookspec
def register_loggers(register: Callable[[type[Logger]], None]) -> None:
    """Register loggers / trackers (subclasses of :class:`adaptool.Logger`).

    Example::

        @adaptool.hookimpl
        def register_loggers(register):
            register(MLflow)     # recipes use [logging] to = ["mlflow"]
    """


@hookspec
def register_callbacks(register: Callable[[type[Callback]], None]) -> None:
    """Register training-loop callbacks (subclasses of :class:`adaptool.Callback`).

    Example::

        @adaptool.hookimpl
        def register_callbacks(register):
            register(StopAt)     # recipes use [callbacks.stop-at] loss = 0.5
    """


@hookspec
def register_commands(app: typer.Typer, context: CommandContext) -> None:
    """Add commands to the ``adaptool`` command line (the Typer app itself). ``context``
    reaches what a command needs of adaptool: the registry, recipes, data, adapters.

    Example::

        @adaptool.hookimpl
        def register_commands(app, context):
            @app.command()
            def rows(recipe: str):
                "Count a recipe's rows."
                print(len(context.load_rows(context.load_recipe(recipe))))
    """
