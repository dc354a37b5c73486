"""The built-in commands, added through ``register_commands`` like a plugin's own."""

from __future__ import annotations

from typing import Any

from adaptool.hookspecs import hookimpl


@hookimpl
def register_commands(app: Any) -> None:
    from adaptool.cli import (
        chat,
        check,
        eval,
        generate,
        inspect,
        ls,
        merge,
        plugins,
        pull,
        push,
        serve,
        train,
    )

    app.command("train")(train.train_cli)
    app.command("generate")(generate.generate_cli)
    app.command("eval")(eval.eval_cli)
    app.command("merge")(merge.merge_cli)
    app.command("push")(push.push_cli)
    app.command("pull")(pull.pull_cli)
    app.command("inspect")(inspect.inspect_cli)
    app.command("ls")(ls.ls_cli)
    app.command("check")(check.check_cli)
    app.command("serve")(serve.serve_cli)
    app.command("chat")(chat.chat_cli)
    app.add_typer(plugins.plugins_app, name="plugins")
