"""``adaptool plugins``: what is installed, who provides it, and what was skipped."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from adaptool.cli.options import JsonOpt
from adaptool.cli.output import console


def plugins_cli(as_json: JsonOpt = False) -> None:
    """List plugins: name, version, distribution and what each registers."""
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
