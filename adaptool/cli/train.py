"""``adaptool train RECIPE``: train an adapter from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptool.cli.options import RecipeArg, SetOpt
from adaptool.cli.output import console


def train_cli(
    recipe: RecipeArg,
    set_: SetOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output dir (default: output.dir).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in the output.")
    ] = False,
    init_adapter: Annotated[
        str | None,
        typer.Option(
            "--init-adapter", help="Start from this adapter (dir or Hub id; new optimizer)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output dir.")
    ] = False,
    nproc: Annotated[
        int,
        typer.Option("--nproc", min=1, help="Processes on this machine (torchrun; DDP)."),
    ] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Machines in the run.")] = 1,
    node_rank: Annotated[
        int, typer.Option("--node-rank", min=0, help="This machine's place (0: the first).")
    ] = 0,
    master_addr: Annotated[
        str | None, typer.Option("--master-addr", help="The first machine's address.")
    ] = None,
    master_port: Annotated[
        int | None, typer.Option("--master-port", help="A free port on the first machine.")
    ] = None,
) -> None:
    """Train an adapter as RECIPE describes.

    Writes adapter_config.json + adapter_model.safetensors (loadable by plain peft), the
    tokenizer, the resolved recipe.toml, metrics.jsonl, loss.png and the adaptool.json manifest.
    Ctrl-C writes a checkpoint; --resume continues from it.
    """
    from adaptool.distributed import current

    if (nproc > 1 or nnodes > 1) and not current().distributed:
        from adaptool.errors import AdaptoolError, param
        from adaptool.launch import launch

        if nnodes > 1 and not master_addr:
            raise AdaptoolError(
                f"{param('nnodes', str(nnodes))} needs {param('master_addr', 'ADDR')}: the "
                f"address of the first machine (node rank 0), the same on every machine."
            )

        argv = ["train", str(recipe), *[a for s in set_ or [] for a in ("--set", s)]]
        argv += ["--output", str(output)] if output else []
        argv += ["--init-adapter", init_adapter] if init_adapter else []
        argv += ["--resume"] * resume + ["--overwrite"] * overwrite
        raise typer.Exit(
            launch(
                argv,
                nproc=nproc,
                nnodes=nnodes,
                node_rank=node_rank,
                master_addr=master_addr,
                master_port=master_port,
            )
        )
    from adaptool.hub.locate import locate
    from adaptool.recipe import load_recipe
    from adaptool.training.progress import ConsoleReporter
    from adaptool.training.run import train

    loaded = load_recipe(recipe, set_ or [])
    out = console()
    result = train(
        loaded,
        output_dir=output,
        resume=resume,
        init_adapter=locate(init_adapter).path if init_adapter is not None else None,
        overwrite=overwrite,
        reporter=ConsoleReporter(out),
    )
    if not current().main:  # the main process reports for the world
        raise typer.Exit(130 if result.interrupted else 0)
    if result.interrupted:
        out.print(
            f"interrupted at step {result.step}/{result.total_steps}; a checkpoint is saved. "
            f"Continue with: adaptool train {recipe} --resume"
            + "".join(f" --set '{s}'" for s in set_ or [])
            + (f" --output {output}" if output else ""),
            markup=False,
        )
        raise typer.Exit(130)
    losses = f"train loss {result.train_loss:.4f}" if result.train_loss is not None else ""
    if result.eval_loss is not None:
        losses += f", eval loss {result.eval_loss:.4f}"
    out.print(
        f"done: {result.step} steps, {result.tokens:,} tokens in {result.wall_time:.1f} s; "
        f"{losses}\nadapter: {result.output_dir}",
        markup=False,
    )
