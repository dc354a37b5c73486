"""Terminal output shared by the commands: one rich console each for stdout and stderr."""

from __future__ import annotations

import functools

from rich.console import Console
from rich.text import Text

from adaptool.hub.client import redact


@functools.cache
def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


@functools.cache
def error_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: BaseException | str) -> None:
    """One paragraph, no traceback; the text is printed as is (no markup, no hard wraps)."""
    text = Text("error: ", style="bold red")
    text.append(redact(str(message)))
    error_console().print(text, soft_wrap=True)
