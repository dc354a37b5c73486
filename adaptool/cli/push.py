"""``adaptool push DIR [REPO_ID]``: share an adapter or merged model on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptool.cli.output import console


def push_cli(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Adapter or merged model dir.")],
    repo_id: Annotated[
        str | None,
        typer.Argument(help="Hub repo id (user/name); default: the recipe's [hub] repo_id."),
    ] = None,
    private: Annotated[
        bool | None,
        typer.Option(
            "--private/--public",
            help="Visibility of a repo this creates (default: private, or the recipe's [hub]).",
            show_default=False,
        ),
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Push to this branch (made if missing).")
    ] = None,
    create_pr: Annotated[
        bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")
    ] = False,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
) -> None:
    """Push DIR to the Hub as REPO_ID, with a model card.

    Uploads the safetensors weights, configs, tokenizer, manifest, recipe, metrics and loss plot
    (never pickle files) and a model card with metadata, results and usage for adaptool and plain
    peft. The token comes from HF_TOKEN or your saved login and is never printed.
    """
    from adaptool.hub.push import push

    result = push(
        Path(directory),
        repo_id,
        private=private,
        revision=revision,
        create_pr=create_pr,
        message=message,
    )
    out = console()
    made = f"created {'private' if result.private else 'public'} repo" if result.created else "repo"
    out.print(
        f"pushed {result.kind} to {made} {result.repo_id} ({result.revision}): "
        f"{len(result.uploaded)} files"
        + (f", {len(result.deleted)} stale removed" if result.deleted else ""),
        markup=False,
    )
    out.print(result.pr_url or result.commit_url, markup=False)
