"""``adaptool inspect TARGET``: what an adapter is, where it came from, how it did."""

from __future__ import annotations

from typing import Annotated

import typer

from adaptool.cli.output import not_yet


def inspect_cli(
    target: Annotated[str, typer.Argument(help="Adapter dir or Hub id.")],
) -> None:
    """Show TARGET's base model, method, options, size and provenance (not available yet)."""
    not_yet("inspect", "Its adapter_config.json holds the base model and method meanwhile.")
