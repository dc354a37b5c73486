"""``adaptool push DIR [REPO_ID]``: share an adapter on the Hugging Face Hub."""

from __future__ import annotations

from typing import Annotated

import typer

from adaptool.cli.output import not_yet


def push_cli(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Adapter or merged model dir.")],
    repo_id: Annotated[str | None, typer.Argument(help="Hub repo id.")] = None,
) -> None:
    """Push DIR to the Hub as REPO_ID, with a model card (not available yet)."""
    not_yet("push", "huggingface_hub's upload_folder() can upload an adapter dir meanwhile.")
