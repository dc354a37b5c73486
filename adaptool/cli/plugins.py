"""``adaptool plugins``: what is installed, who provides it, and what was skipped;
``adaptool plugins install`` / ``uninstall`` run pip in adaptool's own environment (as
``llm install`` does), so a plugin lands where adaptool will find it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Annotated

import typer
from rich.table import Table

from adaptool.cli.options import JsonOpt
from adaptool.cli.output import console

plugins_app = typer.Typer(
    help="List installed plugins; install or uninstall them.", no_args_is_help=False
)


@plugins_app.callback(invoke_without_command=True)
def plugins_cli(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List plugins: name, version, distribution and what each registers."""
    if ctx.invoked_subcommand is not None:
        return
    from adaptool.plugins import get_plugins

    plugins = get_plugins()
    if as_json:
        data = {
            "plugins": [info.as_dict() for info in plugins.plugins.values()],
            "problems": [vars(p) for p in plugins.problems],
            "blocked": plugins.blocked,
        }
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table("plugin", "distribution", "version", "registers")
    for info in plugins.plugins.values():
        registers = "; ".join(
            f"{kind}: {', '.join(names)}" for kind, names in info.registers.items() if names
        )
        table.add_row(info.name, info.provider.distribution, info.provider.version, registers)
    out = console()
    out.print(table)
    for problem in plugins.problems:
        out.print(f"skipped: {problem}", markup=False, soft_wrap=True)
    for name in plugins.blocked:
        out.print(f"blocked: {name} (ADAPTOOL_DISABLE_PLUGINS)", markup=False)


@plugins_app.command("install")
def install_cli(
    packages: Annotated[
        list[str], typer.Argument(help="Package names (as pip takes them) or local folders.")
    ],
    editable: Annotated[
        bool, typer.Option("--editable", "-e", help="Install a local folder in editable mode.")
    ] = False,
    upgrade: Annotated[bool, typer.Option("--upgrade", "-U", help="Upgrade if installed.")] = False,
) -> None:
    """Install plugin packages into adaptool's own environment with pip."""
    args = ["install"]
    if upgrade:
        args.append("--upgrade")
    for package in packages:
        args += ["--editable", package] if editable else [package]
    _pip(args)


@plugins_app.command("uninstall")
def uninstall_cli(
    packages: Annotated[list[str], typer.Argument(help="Distribution names to remove.")],
) -> None:
    """Uninstall plugin packages from adaptool's own environment with pip."""
    from adaptool.errors import AdaptoolError

    if any(p.strip().lower() == "adaptool" for p in packages):
        raise AdaptoolError("`adaptool plugins uninstall` removes plugins, not adaptool itself.")
    _pip(["uninstall", "--yes", *packages])


def _pip(args: list[str]) -> None:
    """Run pip with ``args`` in this interpreter's environment; its failure is exit 2."""
    from adaptool.errors import AdaptoolError

    command = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise AdaptoolError(
            f"pip {args[0]} failed (exit {done.returncode}); its output above says why. "
            f"adaptool ran: {' '.join(command)}"
        )
    console().print("done: `adaptool plugins` lists what each plugin registers.", markup=False)
