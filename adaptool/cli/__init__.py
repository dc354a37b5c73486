"""The ``adaptool`` command line: a Typer app whose commands all come from plugins (the
built-in ones from ``adaptool.builtin.commands``). Any AdaptoolError becomes a one-paragraph
message on stderr and exit code 2. Nothing here imports torch or transformers."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from adaptool.cli.output import error_console, print_error
from adaptool.errors import AdaptoolError

HELP = (
    "Train, merge, share and run parameter-efficient adapters (LoRA, QLoRA, ...) for "
    "Hugging Face causal language models, from a TOML recipe."
)


class AdaptoolGroup(TyperGroup):
    """Turns adaptool's own errors into a clear message and exit code 2, never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except AdaptoolError as exc:
            print_error(exc)
            raise typer.Exit(exc.exit_code) from None


def _version(value: bool) -> None:
    if value:
        from adaptool import __version__

        typer.echo(f"adaptool {__version__}")
        raise typer.Exit()


def build_app(plugins: Any = None) -> typer.Typer:
    """A fresh app with every plugin's commands (``plugins`` defaults to the installed ones)."""
    from adaptool.plugins import get_plugins, use_plugins

    if plugins is None:
        plugins = get_plugins()
    else:
        use_plugins(plugins)
    app = typer.Typer(
        name="adaptool",
        help=HELP,
        cls=AdaptoolGroup,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def root(
        version: Annotated[
            bool,
            typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
        ] = False,
    ) -> None:
        """Train, merge, share and run parameter-efficient adapters from a TOML recipe."""

    plugins.add_commands(app)
    return app


def main() -> None:
    """Console-script entry point."""
    from adaptool.plugins import get_plugins

    try:
        plugins = get_plugins()
        app = build_app(plugins)
    except AdaptoolError as exc:  # strict plugin mode, or a broken built-in
        print_error(exc)
        sys.exit(exc.exit_code)
    for problem in plugins.problems:
        error_console().print(f"warning: {problem} (skipped)", markup=False, soft_wrap=True)
    app()
