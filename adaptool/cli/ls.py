"""``adaptool ls``: the adapters and models trained, merged or pulled on this machine."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from adaptool.cli.options import JsonOpt
from adaptool.cli.output import console


def ls_cli(
    as_json: JsonOpt = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="Include entries whose folder has since been deleted.")
    ] = False,
) -> None:
    """List the adapters and models trained, merged or pulled on this machine.

    Oldest first, with kind, source, base, method, created and path, from
    $ADAPTOOL_HOME/index.jsonl (default ~/.local/share/adaptool).
    """
    from adaptool.artifacts import index

    found = index.entries(include_missing=show_all)
    if as_json:
        typer.echo(json.dumps([asdict(e) | {"exists": e.exists} for e in found], indent=2))
        return
    out = console()
    if not found:
        out.print("nothing trained, merged or pulled here yet.", markup=False)
        return
    for e in found:
        source = e.source
        if e.source == "pulled":
            source = f"pulled {e.repo_id}@{e.revision} ({(e.sha or '')[:8]})"
        created = e.created[:16].replace("T", " ")
        method = (e.method or "?").lower()
        gone = "" if e.exists else "  (deleted)"
        out.print(f"{e.kind:<8} {source}  {method} on {e.base or '?'}  {created}", markup=False)
        out.print(f"  {e.path}{gone}", markup=False)
