"""``adaptool pull REPO_ID``: download and check an adapter from the Hub."""

from __future__ import annotations

from typing import Annotated

import typer

from adaptool.cli.output import not_yet


def pull_cli(repo_id: Annotated[str, typer.Argument(help="Hub repo id.")]) -> None:
    """Pull REPO_ID from the Hub and check it against its base model (not available yet)."""
    not_yet("pull", "huggingface_hub's snapshot_download() can fetch an adapter meanwhile.")
