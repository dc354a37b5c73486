"""``adaptool eval TARGET``: generate on a dataset and score the outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from adaptool.cli.output import console


def eval_cli(
    target: Annotated[str, typer.Argument(help="Adapter dir (or merged model dir, or Hub id).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Rows to score (default: the rows held out at training)."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Score the first N.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    compare_base: Annotated[
        bool, typer.Option("--compare-base", help="Score the base without the adapter too.")
    ] = False,
    base: Annotated[str | None, typer.Option("--base", help="Where the base model is.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    outputs: Annotated[
        Path | None, typer.Option("--outputs", help="Write every generation to this .jsonl.")
    ] = None,
) -> None:
    """Generate on every row of --data (greedy) and let the adapter's formatter score it."""
    from adaptool.errors import AdaptoolError
    from adaptool.evaluate import evaluate
    from adaptool.hub.locate import locate

    if outputs is not None and (outputs.is_dir() or not outputs.parent.is_dir()):
        why = "is a folder" if outputs.is_dir() else "is in a folder that does not exist"
        raise AdaptoolError(f"--outputs {outputs} {why}; give a .jsonl file to write.")

    located = locate(target)
    result = evaluate(
        located.path,
        data=data,
        limit=limit,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        compare_base=compare_base,
        base=located.base_or(base),
    )
    if outputs is not None:
        outputs.write_text(
            "".join(json.dumps(g.as_dict(), ensure_ascii=False) + "\n" for g in result.generations),
            encoding="utf-8",
        )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "target": result.target,
                    "data": result.data,
                    "metrics": result.metrics,
                    "base_metrics": result.base_metrics,
                },
                indent=2,
            )
        )
        return
    out = console()
    out.print(f"{result.target} on {result.data}", markup=False)
    for key, value in result.metrics.items():
        base_value = (result.base_metrics or {}).get(key)
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        if base_value is not None:
            shown += (
                f"   (base without adapter: {base_value:.3f})"
                if isinstance(base_value, float)
                else ""
            )
        out.print(f"  {key:<18} {shown}", markup=False)
