"""``adaptool inspect TARGET``: what an adapter is, where it came from, how it did."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from adaptool.cli.options import JsonOpt
from adaptool.cli.output import console


def inspect_cli(
    target: Annotated[str, typer.Argument(help="Adapter dir, merged model dir, or Hub id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show what TARGET is: base, method, options, parameters, size, provenance, metrics.

    TARGET is a local adapter or merged model dir, or a Hub id: read from its pulled copy, or
    from the Hub without downloading the weights.
    """
    from adaptool.inspection import inspect_target, summary_rows

    info = inspect_target(target)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    for label, value in summary_rows(info):
        table.add_row(label, value)
    console().print(table)
