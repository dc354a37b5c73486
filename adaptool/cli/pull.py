"""``adaptool pull REPO_ID``: download an adapter from the Hub and check it against its base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptool.cli.output import console


def pull_cli(
    repo_id: Annotated[str, typer.Argument(help="Hub repo id (user/name).")],
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch, tag or commit sha (default main).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Put the files here instead of the Hub cache."),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", help="The base model to use (local path or Hub id), recorded."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --output.")] = False,
) -> None:
    """Pull REPO_ID from the Hub and check it before it is used.

    The revision is pinned to the commit it resolves to. The adapter config must parse, the
    weights must be safetensors, the base it names (or --base) must resolve, and its target
    modules and shapes must fit that base. Afterwards `adaptool generate REPO_ID`, `merge
    REPO_ID` and `train --init-adapter REPO_ID` use the pulled copy (and --base).
    """
    from adaptool.hub.pull import pull

    result = pull(repo_id, revision=revision, output=output, base=base, overwrite=overwrite)
    out = console()
    out.print(
        f"pulled {result.repo_id} @ {result.revision} (commit {result.sha}): "
        f"{len(result.files)} files",
        markup=False,
    )
    if result.kind == "adapter":
        via = " (--base, recorded)" if result.base_override else ""
        out.print(
            f"checked: {result.method} adapter fits the base {result.base}{via}", markup=False
        )
    else:
        out.print("checked: a merged model with safetensors weights", markup=False)
    out.print(f"path: {result.path}", markup=False)
