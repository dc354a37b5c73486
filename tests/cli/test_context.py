"""A plugin's command reaches adaptool through the ``context`` of ``register_commands``: the
registry, recipes, data and adapters, loaded as adaptool's own commands load them."""

from __future__ import annotations

import textwrap

from adaptool.plugins import load_plugins, use_plugins
from adaptool.testing import install_fake_plugin
from tests.helpers import DATA, cli, recipe_file

COMMAND = textwrap.dedent(
    """
    import adaptool


    @adaptool.hookimpl
    def register_commands(app, context):
        @app.command()
        def rows(recipe: str):
            "Count a recipe's rows and name its plugins."
            loaded = context.load_recipe(recipe, ["data.eval_fraction=0.5"])
            plugins = context.resolve_plugins(loaded)
            print(len(context.load_rows(loaded)), plugins.formatter.name, plugins.method.title())
            print(sorted(context.registry.names("callback")))

        @app.command()
        def first(adapter: str):
            "The adapter's first tokens for a prompt."
            target = context.open(adapter)
            print(type(target.model).__name__, target.formatter.name)
    """
)


def test_a_plugin_command_loads_recipes_data_and_adapters(
    tmp_path, tiny_bloom_dir, adapter, monkeypatch
):
    site = install_fake_plugin(
        tmp_path / "site", distribution="adaptool-rows", module="rows_cmd", source=COMMAND
    )
    monkeypatch.syspath_prepend(str(site))
    plugins = load_plugins(strict=True, disabled=[])
    use_plugins(plugins)
    result = cli(plugins, "rows", recipe_file(tmp_path, tiny_bloom_dir))
    assert result.exit_code == 0, result.output
    count, formatter, method = result.output.splitlines()[0].split()
    assert int(count) == len((DATA / "quotes.jsonl").read_text().splitlines())
    assert (formatter, method) == ("quote-tags", "LoRA")
    assert "early-stopping" in result.output
    result = cli(plugins, "first", adapter)
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["PeftModelForCausalLM", "quote-tags"]
