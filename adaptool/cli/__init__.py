"""The ``adaptool`` command line: a Typer app whose commands all come from plugins (the
built-in ones from ``adaptool.builtin.commands``). Any AdaptoolError becomes a one-paragraph
message on stderr and exit code 2. Nothing here imports torch or transformers."""

from __future__ import annotations

import errno
import os
import re
import sys
import warnings
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from adaptool.cli.output import error_console, print_error
from adaptool.errors import AdaptoolError, AdaptoolWarning, describe
from adaptool.hub.client import redact

HELP = (
    "Train, merge, share and run parameter-efficient adapters (LoRA, QLoRA, ...) for "
    "Hugging Face causal language models, from a TOML recipe."
)


class AdaptoolGroup(TyperGroup):
    """The error boundary. adaptool's own errors become a clear message naming the command's
    flags, and exit code 2; so do the system's (a full disk, a read-only or missing folder).
    Anything else is a bug: one line, exit code 1, and the traceback in a file, never on the
    terminal. adaptool's warnings become one line each."""

    def invoke(self, ctx: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("always", AdaptoolWarning)
            warnings.showwarning = _one_line_for_ours(warnings.showwarning)
            try:
                return super().invoke(ctx)
            except AdaptoolError as exc:
                print_error(exc.render(self._flags(ctx)))
                raise typer.Exit(exc.exit_code) from None
            except (typer.Exit, typer.Abort, TyperException):  # Typer's own way out
                raise
            except OSError as exc:
                print_error(system_error(exc))
                raise typer.Exit(2) from None
            except MemoryError:
                print_error(OUT_OF_MEMORY)
                raise typer.Exit(2) from None
            except Exception as exc:
                if type(exc).__name__ == "OutOfMemoryError":  # torch's, on the GPU
                    print_error(f"{describe(exc)}. {OUT_OF_MEMORY}")
                    raise typer.Exit(2) from None
                system = from_native_library(exc)
                if system is not None:  # safetensors and tokenizers report the OS in text
                    print_error(system_error(system))
                    raise typer.Exit(2) from None
                print_error(unexpected_error(exc, ctx.invoked_subcommand))
                raise typer.Exit(1) from None

    def _flags(self, ctx: Any) -> dict[str, str]:
        """The running command's parameters by name -> their flag (``base`` -> ``--base``)."""
        command = self.get_command(ctx, ctx.invoked_subcommand or "")
        flags = {}
        for p in getattr(command, "params", []):
            opts = [o for o in p.opts if o.startswith("--")]
            flags[p.name] = opts[0] if opts else str(p.name).upper()
        return flags


OUT_OF_MEMORY = (
    "the model or its batch does not fit in memory: lower training.batch_size (raise "
    "gradient_accumulation_steps to keep the step), set training.gradient_checkpointing = "
    "true, quantize the base (bnb-4bit), or shorten data.max_length."
)

#: what the system's errors mean for the user, by errno
SYSTEM_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
}


def system_error(exc: OSError) -> str:
    """One paragraph for an error of the system: what happened, where, what to do."""
    what = SYSTEM_ERRORS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    where = f" writing or reading {exc.filename}" if exc.filename else ""
    advice = (
        " Free some space (or choose another --output) and run the command again; an "
        "interrupted training run continues with --resume."
        if exc.errno in (errno.ENOSPC, errno.EDQUOT)
        else ""
    )
    return f"{what}{where} ({describe(exc)}).{advice}"


def from_native_library(exc: BaseException) -> OSError | None:
    """The system error inside a Rust library's exception (``... (os error 28)``), if any."""
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found is None:
        return None
    number = int(found[1])
    return OSError(number, os.strerror(number))


def unexpected_error(exc: BaseException, command: str | None) -> str:
    """A bug's one line, with the full traceback written to a file it names."""
    import tempfile
    import time
    import traceback

    text = redact("".join(traceback.format_exception(exc)))
    try:  # a new file only this user can read (no name to guess, no link to follow)
        fd, path = tempfile.mkstemp(
            prefix=f"adaptool-traceback-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt"
        )
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        where = f"the full traceback is in {path}"
    except OSError:
        where = "the traceback could not be saved"
    return (
        f"adaptool {command or ''} failed unexpectedly: {describe(exc)}. This is a bug in "
        f"adaptool or one of its plugins; {where} (please include it in a report)."
    )


def _one_line_for_ours(default: Any) -> Any:
    """A ``warnings.showwarning`` that prints an AdaptoolWarning as one ``warning:`` line and
    leaves the others to ``default``."""

    def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, AdaptoolWarning):
            error_console().print(f"warning: {message}", markup=False, soft_wrap=True)
        else:
            default(message, category, *args, **kwargs)

    return show


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

    from adaptool.cli.context import CommandContext

    plugins.add_commands(app, CommandContext(plugins))
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
