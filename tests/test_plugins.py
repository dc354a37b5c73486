"""The plugin registry: entry points, attribution, clashes, isolation, strict and disabled."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from adaptool import Formatter, PluginError
from adaptool.plugins import load_plugins
from adaptool.testing import install_fake_plugin

GOOD = textwrap.dedent(
    """
    import adaptool
    from adaptool import Example, Formatter, Options

    class Shout(Formatter):
        name = "shout"
        version = "3"
        class Options(Options):
            column: str = "text"
        def columns(self):
            return [self.options.column]
        def format(self, row, tokenizer):
            return Example("Shout: ", row[self.options.column].upper())
        def generation_prompt(self, raw, tokenizer):
            return "Shout: "

    @adaptool.hookimpl
    def register_formatters(register):
        register(Shout)
    """
)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path standing in for site-packages."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m.startswith("fake_")]:
        del sys.modules[name]


def install(site, distribution, module, source, **kw):
    install_fake_plugin(site, distribution=distribution, module=module, source=source, **kw)
    importlib.invalidate_caches()


def test_builtins_register_through_the_hooks(plugins):
    registry = plugins.registry
    assert registry.names("formatter") == [
        "chat",
        "instruction",
        "prompt-completion",
        "quote-tags",
        "text",
    ]
    assert registry.names("quantizer") == ["bnb-4bit", "bnb-8bit", "none"]
    from adaptool.builtin.peft_methods import METHODS

    assert registry.names("peft-method") == sorted(m.name for m in METHODS)
    entry = registry.entry("formatter", "quote-tags")
    assert entry.provider.distribution == "adaptool"
    assert entry.provider.plugin == "adaptool.builtin.formatters"
    assert plugins.plugins["adaptool.builtin.formatters"].registers["formatter"] == [
        "quote-tags",
        "text",
        "prompt-completion",
        "instruction",
        "chat",
    ]


def test_entry_point_plugin_is_loaded_and_attributed(site):
    install(site, "fake-shout", "fake_shout", GOOD, version="2.5")
    plugins = load_plugins(strict=False, disabled=[])
    entry = plugins.registry.entry("formatter", "shout")
    assert entry.provider.distribution == "fake-shout"
    assert entry.provider.version == "2.5"
    assert issubclass(entry.cls, Formatter)
    assert plugins.plugins["fake_shout"].as_dict()["registers"] == {"formatter": ["shout"]}
    assert plugins.problems == []


def test_unknown_name_lists_available_and_suggests(registry):
    with pytest.raises(PluginError) as err:
        registry.get("formatter", "quote-tag")
    message = str(err.value)
    assert "unknown formatter 'quote-tag'" in message
    assert "Did you mean 'quote-tags'?" in message
    assert "chat, instruction, prompt-completion, quote-tags, text" in message


def test_clash_names_both_packages(site):
    clash = GOOD.replace('name = "shout"', 'name = "quote-tags"')
    install(site, "fake-clash", "fake_clash", clash)
    plugins = load_plugins(strict=False, disabled=[])
    [problem] = plugins.problems
    assert "adaptool" in problem.message and "fake-clash" in str(problem)
    assert [p.distribution for p in plugins.problems] == ["fake-clash"]
    # a built-in's name stays the built-in's, and everything else keeps working
    assert plugins.registry.entry("formatter", "quote-tags").provider.distribution == "adaptool"
    assert plugins.registry.get("formatter", "text").name == "text"


def test_clash_between_two_third_party_packages(site):
    install(site, "fake-one", "fake_one", GOOD)
    install(site, "fake-two", "fake_two", GOOD)
    plugins = load_plugins(strict=False, disabled=[])
    with pytest.raises(PluginError) as err:
        plugins.registry.get("formatter", "shout")
    assert "fake-one 1.0" in str(err.value) and "fake-two 1.0" in str(err.value)


def test_plugin_that_fails_to_import_is_reported_and_skipped(site):
    install(site, "fake-broken", "fake_broken", "raise ImportError('needs libfoo')\n")
    install(site, "fake-shout", "fake_shout", GOOD)
    plugins = load_plugins(strict=False, disabled=[])
    assert len(plugins.problems) == 1
    problem = plugins.problems[0]
    assert problem.distribution == "fake-broken"
    assert "failed to import" in problem.message and "needs libfoo" in problem.message
    assert {"chat", "instruction", "quote-tags", "shout", "text"} <= set(
        plugins.registry.names("formatter")
    )


def test_plugin_raising_inside_a_hook_is_skipped_whole(site):
    source = GOOD.replace(
        "    register(Shout)", "    register(Shout)\n    raise RuntimeError('boom')"
    )
    install(site, "fake-raises", "fake_raises", source)
    plugins = load_plugins(strict=False, disabled=[])
    assert "shout" not in plugins.registry.names("formatter")  # nothing half-registered
    assert plugins.problems[0].distribution == "fake-raises"
    assert "register_formatters raised RuntimeError: boom" in plugins.problems[0].message


def test_register_checks_type_and_name(site):
    bad_name = GOOD.replace('name = "shout"', 'name = "Shout_It"')
    install(site, "fake-badname", "fake_badname", bad_name)
    not_a_class = GOOD.replace("    register(Shout)", "    register(Shout())")
    install(site, "fake-instance", "fake_instance", not_a_class)
    plugins = load_plugins(strict=False, disabled=[])
    messages = {p.distribution: p.message for p in plugins.problems}
    assert "'Shout_It'" in messages["fake-badname"]
    assert "lowercase letters, digits and dashes" in messages["fake-badname"]
    assert "not a subclass of adaptool.Formatter" in messages["fake-instance"]


def test_strict_mode_turns_a_broken_plugin_into_an_error(site, monkeypatch):
    install(site, "fake-broken", "fake_broken", "raise ImportError('needs libfoo')\n")
    monkeypatch.setenv("ADAPTOOL_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError) as err:
        load_plugins()
    assert "fake-broken" in str(err.value) and "ADAPTOOL_STRICT_PLUGINS" in str(err.value)


def test_strict_mode_turns_a_clash_into_an_error(site):
    install(site, "fake-clash", "fake_clash", GOOD.replace('"shout"', '"text"'))
    with pytest.raises(PluginError, match="fake-clash"):
        load_plugins(strict=True, disabled=[])


@pytest.mark.parametrize("blocked", ["fake_broken", "fake-broken"])
def test_disabled_plugins_are_not_imported(site, monkeypatch, blocked):
    install(site, "fake-broken", "fake_broken", "raise ImportError('needs libfoo')\n")
    monkeypatch.setenv("ADAPTOOL_DISABLE_PLUGINS", f"something-else, {blocked}")
    monkeypatch.setenv("ADAPTOOL_STRICT_PLUGINS", "1")  # would raise if it were imported
    plugins = load_plugins()
    assert plugins.blocked == ["fake_broken"]
    assert plugins.problems == []
    assert "fake_broken" not in sys.modules


def test_register_commands_adds_a_command_and_isolates_failures(site):
    import typer
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    commands = textwrap.dedent(
        """
        import adaptool

        @adaptool.hookimpl
        def register_commands(app):
            @app.command()
            def hello(name: str):
                "Say hello."
                print(f"hello {name}")
        """
    )
    install(site, "fake-hello", "fake_hello", commands)
    broken = (
        "import adaptool\n@adaptool.hookimpl\n"
        "def register_commands(app):\n    raise ValueError('no')\n"
    )
    install(site, "fake-nocmd", "fake_nocmd", broken)
    plugins = load_plugins(strict=False, disabled=[])
    app = build_app(plugins)
    assert isinstance(app, typer.Typer)
    result = CliRunner().invoke(app, ["hello", "world"])
    assert result.exit_code == 0, result.output
    assert "hello world" in result.output
    assert plugins.plugins["fake_hello"].registers["commands"] == ["hello"]
    assert [p.distribution for p in plugins.problems] == ["fake-nocmd"]
    assert CliRunner().invoke(app, ["check", "--help"]).exit_code == 0


def test_hookimpl_with_a_wrong_signature_is_reported(site):
    source = "import adaptool\n@adaptool.hookimpl\ndef register_formatters(registrar):\n    pass\n"
    install(site, "fake-sig", "fake_sig", source)
    plugins = load_plugins(strict=False, disabled=[])
    assert plugins.problems[0].distribution == "fake-sig"
    assert "could not be registered" in plugins.problems[0].message


def test_every_hook_is_documented_with_an_example_and_tested():
    """datasette's rule: a hook without docs or a test is a bug."""
    import inspect
    from pathlib import Path

    from adaptool import hookspecs

    hooks = [n for n, f in vars(hookspecs).items() if n.startswith("register_") and callable(f)]
    assert sorted(hooks) == [
        "register_callbacks",
        "register_commands",
        "register_formatters",
        "register_loggers",
        "register_peft_methods",
        "register_quantizers",
    ]
    tests = "".join(p.read_text() for p in Path(__file__).parent.rglob("test_*.py"))
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in hooks:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Example::" in doc and "@adaptool.hookimpl" in doc, name
        assert name in readme, f"{name} is not in the README"
        assert tests.count(name) >= 2, f"{name} has no test"


QUANT_AND_METHOD = textwrap.dedent(
    """
    from typing import Literal

    import adaptool
    from adaptool import Options, PeftMethod, Quantizer

    class Half(Quantizer):
        name = "half"
        quantized = False
        class Options(Options):
            dtype: Literal["float16", "bfloat16"] = "float16"
        def from_pretrained_kwargs(self):
            import torch
            return {"dtype": getattr(torch, self.options.dtype)}

    class ScaledIA3(PeftMethod):
        name = "scaled-ia3"
        peft_type = "IA3"
        uses = frozenset()
        weight_parts = ("ia3_",)
        class Options(Options):
            feedforward_modules: list[str] = ["dense_4h_to_h"]
        def peft_config(self, settings, run):
            from peft import IA3Config
            return IA3Config(task_type="CAUSAL_LM",
                             target_modules=["query_key_value", *self.options.feedforward_modules],
                             feedforward_modules=self.options.feedforward_modules)

    @adaptool.hookimpl
    def register_quantizers(register):
        register(Half)

    @adaptool.hookimpl
    def register_peft_methods(register):
        register(ScaledIA3)
    """
)


def test_third_party_quantizer_and_peft_method_with_validated_options(site, tmp_path):
    """register_quantizers and register_peft_methods from an installed package; the recipe
    checks their options with their own schemas."""
    import torch

    from adaptool import RecipeError
    from adaptool.base import RunInfo
    from adaptool.plugins import use_plugins
    from adaptool.recipe import load_recipe, resolve_plugins

    install(site, "fake-extras", "fake_extras", QUANT_AND_METHOD)
    plugins = load_plugins(strict=True, disabled=[])
    assert plugins.plugins["fake_extras"].registers == {
        "quantizer": ["half"],
        "peft-method": ["scaled-ia3"],
    }
    base = (
        '[model]\nname = "m"\n[data]\nsource = "d.jsonl"\nformatter = "text"\n[output]\ndir = "o"\n'
    )
    path = tmp_path / "r.toml"
    path.write_text(
        base + '[quantization]\nbackend = "half"\ndtype = "bfloat16"\n'
        '[peft]\nmethod = "scaled-ia3"\nfeedforward_modules = ["dense_h_to_4h"]\n'
    )
    use_plugins(plugins)
    recipe = load_recipe(path)
    resolved = resolve_plugins(recipe)
    assert resolved.quantizer.from_pretrained_kwargs() == {"dtype": torch.bfloat16}
    config = resolved.method.peft_config(recipe.peft, RunInfo())
    assert config.feedforward_modules == {"dense_h_to_4h"}
    path.write_text(base + '[quantization]\nbackend = "half"\ndtype = "int3"\n')
    with pytest.raises(RecipeError, match="quantizer 'half' option"):
        load_recipe(path)


def test_a_plugin_cannot_take_over_a_builtin_command(site):
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    hijack = textwrap.dedent(
        """
        import adaptool

        @adaptool.hookimpl
        def register_commands(app):
            @app.command("plugins")
            def fake():
                print("the fake plugins command ran")
        """
    )
    install(site, "fake-hijack", "fake_hijack", hijack)
    plugins = load_plugins(strict=False, disabled=[])
    result = CliRunner().invoke(build_app(plugins), ["plugins"])
    assert "the fake plugins command ran" not in result.output and "quote-tags" in result.output
    [problem] = plugins.problems
    assert problem.distribution == "fake-hijack"
    assert "the command 'plugins' is already provided by adaptool" in problem.message


def test_hookimpls_get_only_the_arguments_they_name(site):
    """pluggy's calling convention: an implementation names the arguments it wants (none is
    fine), and gets them positionally."""
    import typer

    no_args = textwrap.dedent(
        """
        import adaptool

        @adaptool.hookimpl
        def register_formatters():
            pass

        @adaptool.hookimpl
        def register_commands():
            pass
        """
    )
    install(site, "fake-noargs", "fake_noargs", no_args)
    positional = GOOD.replace("register_formatters(register)", "register_formatters(register, /)")
    install(site, "fake-posonly", "fake_posonly", positional)
    plugins = load_plugins(strict=False, disabled=[])
    assert plugins.problems == []
    assert plugins.registry.entry("formatter", "shout").provider.distribution == "fake-posonly"
    plugins.add_commands(typer.Typer())
    assert plugins.problems == []
    assert plugins.plugins["fake_noargs"].registers == {}


def test_a_trylast_plugin_cannot_take_a_builtin_name(site):
    """Hooks are called in load order (built-ins first) whatever tryfirst/trylast say."""
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    last = GOOD.replace('name = "shout"', 'name = "text"').replace(
        "@adaptool.hookimpl\n", "@adaptool.hookimpl(trylast=True)\n"
    )
    install(site, "fake-last", "fake_last", last)
    plugins = load_plugins(strict=False, disabled=[])
    assert plugins.registry.entry("formatter", "text").provider.distribution == "adaptool"
    assert "text" in plugins.plugins["adaptool.builtin.formatters"].registers["formatter"]
    [problem] = plugins.problems
    assert problem.distribution == "fake-last"
    assert "the formatter 'text' is already provided by adaptool" in problem.message
    result = CliRunner().invoke(build_app(plugins), ["plugins"])
    assert result.exit_code == 0, result.output


MISSPELLED = GOOD + textwrap.dedent(
    """
    @adaptool.hookimpl
    def register_formater(register):
        register(Shout)

    @adaptool.hookimpl(optionalhook=True)
    def register_someday(register):
        pass
    """
)


def test_a_misspelled_hook_is_reported_with_a_suggestion(site):
    install(site, "fake-typo", "fake_typo", MISSPELLED)
    plugins = load_plugins(strict=False, disabled=[])
    [problem] = plugins.problems  # register_someday is an optionalhook: not reported
    assert problem.distribution == "fake-typo"
    assert (
        "hook 'register_formater' is not an adaptool hook; did you mean 'register_formatters'?"
        in problem.message
    )
    assert plugins.registry.get("formatter", "shout").name == "shout"  # its other hooks work


def test_strict_mode_turns_a_misspelled_hook_into_an_error(site):
    install(site, "fake-typo", "fake_typo", MISSPELLED)
    with pytest.raises(PluginError, match=r"fake-typo.*'register_formater'"):
        load_plugins(strict=True, disabled=[])


HELLO = textwrap.dedent(
    """
    import adaptool

    @adaptool.hookimpl
    def register_commands(app):
        @app.command()
        def hello():
            print(f"hello from {__name__}")
    """
)


def test_two_plugins_adding_one_command_add_neither(site):
    """The clash policy of registrations holds for commands: two third parties claiming one
    name both lose it."""
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    install(site, "fake-one", "fake_one", HELLO)
    install(site, "fake-two", "fake_two", HELLO)
    plugins = load_plugins(strict=False, disabled=[])
    app = build_app(plugins)
    result = CliRunner().invoke(app, ["hello"])
    assert result.exit_code != 0 and "hello from" not in result.output
    assert sorted(p.distribution for p in plugins.problems) == ["fake-one", "fake-two"]
    for problem in plugins.problems:
        assert "fake-one 1.0" in problem.message and "fake-two 1.0" in problem.message
    assert "commands" not in plugins.plugins["fake_one"].registers
    assert CliRunner().invoke(app, ["plugins"]).exit_code == 0


def test_a_plugin_that_exits_at_import_or_has_no_options_schema_is_skipped(site):
    """sys.exit() at import is reported and skipped like any other broken plugin; a class whose
    Options is not an adaptool.Options schema is refused at registration."""
    install(site, "fake-exit", "fake_exit", "import sys\nsys.exit(3)\n")
    no_schema = GOOD.replace("class Options(Options):", "class Options:")
    install(site, "fake-noschema", "fake_noschema", no_schema)
    plugins = load_plugins(strict=False, disabled=[])
    problems = {p.distribution: p.message for p in plugins.problems}
    assert "failed to import (SystemExit: 3)" in problems["fake-exit"]
    assert "must be a subclass of adaptool.Options" in problems["fake-noschema"]
    assert plugins.registry.get("formatter", "text").name == "text"
