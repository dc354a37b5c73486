"""``adaptool check RECIPE``: validate a recipe and show the data as training will see it."""

from __future__ import annotations

import json
import statistics
from typing import Annotated

import typer
from rich.text import Text

from adaptool.cli.options import JsonOpt, RecipeArg, SetOpt
from adaptool.cli.output import console


def check_cli(
    recipe: RecipeArg,
    set_: SetOpt = None,
    examples: Annotated[int, typer.Option("--examples", "-n", min=0, help="Examples to show.")] = 3,
    as_json: JsonOpt = False,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Training processes per machine to plan for.")
    ] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Machines to plan for.")] = 1,
) -> None:
    """Validate RECIPE and show its data as training will see it.

    Resolves the plugins, loads the tokenizer and dataset, and prints formatted examples with
    the part that is trained on marked, token counts, truncation and EOS warnings.
    """
    from adaptool.artifacts.method import format_hyperparameters
    from adaptool.check import check
    from adaptool.recipe import load_recipe

    report = check(load_recipe(recipe, set_ or []), examples=examples, processes=nproc * nnodes)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        return
    out = console()
    r = report.recipe
    out.print(Text(f"Recipe {r.path}", style="bold"))
    out.print(f"  model        {r.model.name}", markup=False)
    out.print(f"  quantization {r.quantization.backend}", markup=False)
    settings = format_hyperparameters(report.hyperparameters)
    trains = f", {report.trainable_params:,} trainable params" if report.trainable_params else ""
    out.print(
        f"  peft         {report.method_title} ({report.method}){': ' if settings else ''}"
        f"{settings}{trains}",
        markup=False,
    )
    out.print(f"  formatter    {report.formatter} v{report.formatter_version}", markup=False)
    out.print(f"  output       {r.output.dir}", markup=False)
    world = report.world
    merged = {0: "", "auto": ", merged into as few micro-batches as memory allows"}.get(
        world["micro_batch_tokens"],
        f", merged into micro-batches of up to {world['micro_batch_tokens']} tokens",
    )
    out.print(
        f"  processes    {world['processes']}"
        + (f" ({world['strategy']})" if world["strategy"] else "")
        + f": effective batch {world['effective_batch']} rows per optimizer step "
        f"({world['rows_per_micro_batch']} x {world['micro_batches_per_step']} micro-batches"
        + (f" x {world['processes']} processes" if world["processes"] > 1 else "")
        + f"{merged}); each holds {world['each_holds']}",
        markup=False,
    )
    out.print(
        f"Data: {report.rows} rows from {r.data.source} "
        f"(train {report.train_rows}, eval {report.eval_rows})",
        markup=False,
    )
    counts = report.token_counts
    out.print(
        f"Tokens per example: min {min(counts)}, mean {statistics.fmean(counts):.1f}, "
        f"max {max(counts)}; {report.over_max_length} over max_length = {r.data.max_length}",
        markup=False,
    )
    if report.examples:
        out.print("Examples («…» is trained on, the rest is masked from the loss):", markup=False)
    for view in report.examples:
        cut = ", truncated" if view.truncated else ""
        out.print(
            f"  row {view.row}: {view.prompt_tokens} prompt + {view.completion_tokens} "
            f"completion tokens, {view.trained_tokens} trained{cut}",
            markup=False,
        )
        text = Text("    ")
        for segment, trained in view.segments:
            if trained:
                text.append("«" + segment + "»", style="bold green")
            else:
                text.append(segment, style="dim")
        out.print(text, soft_wrap=True)
    if report.sources:
        out.print(f"Mixture ({r.data.mix}):", markup=False)
        for source in report.sources:
            weight = f", weight {source['weight']:g}" if source["weight"] is not None else ""
            out.print(
                f"  {source['source']} ({source['formatter']}{weight}): {source['rows']} rows, "
                f"{source['tokens']:,} tokens, {source['trained_tokens']:,} trained",
                markup=False,
            )
    for warning in report.warnings:
        out.print(Text("warning: ", style="bold yellow") + Text(warning), soft_wrap=True)
    out.print(Text("The recipe is valid.", style="bold green"))
