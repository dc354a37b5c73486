"""``adaptool generate TARGET [PROMPT ...]``: run an adapter or a merged model."""

from __future__ import annotations

from typing import Annotated

import typer

from adaptool.cli.output import not_yet


def generate_cli(
    target: Annotated[str, typer.Argument(help="Adapter dir, merged model dir or Hub id.")],
    prompts: Annotated[list[str] | None, typer.Argument(help="Raw inputs.")] = None,
) -> None:
    """Generate with TARGET from PROMPTs formatted by the adapter's formatter."""
    not_yet("generate", "`adaptool check RECIPE` shows the prompts a formatter builds.")
