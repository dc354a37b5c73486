"""``adaptool serve [TARGET ...]``: one base, many adapters, an OpenAI-compatible API and a
playground page."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from adaptool.cli.output import console


def serve_cli(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="Adapter dirs or Hub ids, each served under its folder's name."),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="NAME=DIR_OR_HUB_ID: an adapter under a name of yours."),
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Where the base lives (or the base alone).")
    ] = None,
    quantization: Annotated[
        str | None, typer.Option("--quantization", help="Load the base with this backend.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="ADAPTOOL_API_KEY",
            help="Require it as a bearer token (also $ADAPTOOL_API_KEY); enables the admin routes.",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Completions generated together.")
    ] = 8,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Completions waiting before 429.")
    ] = 32,
    batch_wait_ms: Annotated[
        int,
        typer.Option(
            "--batch-wait-ms", min=0, help="How long a request waits for others to join its batch."
        ),
    ] = 50,
) -> None:
    """Serve TARGET adapters on their shared base: POST /v1/completions and
    /v1/chat/completions (OpenAI's API, `model` picks the adapter), GET /v1/models, and a
    playground page at http://HOST:PORT/."""
    from adaptool.serving.server import check_listenable, open_engine, parse_adapters, serve

    api_key = api_key or None  # an empty key (ADAPTOOL_API_KEY=) is no key
    pairs = parse_adapters(list(targets or []), list(adapter or []))
    check_listenable(host, port)
    engine = open_engine(
        pairs,
        base=base,
        quantization=quantization,
        max_batch=max_batch,
        max_queue=max_queue,
        batch_wait=batch_wait_ms / 1000,
    )
    out = console()
    names = ", ".join([engine.base_id, *engine.adapters])
    out.print(f"serving {names} on http://{host}:{port}/ (API at /v1)", markup=False)
    out.print("API key: required" if api_key else "API key: none (admin routes off)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    serve(engine, host=host, port=port, api_key=api_key)
