"""``adaptool merge ADAPTER``: fold an adapter into its full-precision base."""

from __future__ import annotations

from typing import Annotated

import typer

from adaptool.cli.output import not_yet


def merge_cli(adapter: Annotated[str, typer.Argument(help="Adapter dir or Hub id.")]) -> None:
    """Merge ADAPTER into its base model and write a standalone model."""
    not_yet("merge", "peft's merge_and_unload() can merge an adapter meanwhile.")
