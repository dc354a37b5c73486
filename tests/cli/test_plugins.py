"""adaptool plugins: what is installed, by whom."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from adaptool import __version__
from adaptool.cli import build_app


def run(plugins, *args):
    return CliRunner().invoke(build_app(plugins), list(args))


COMMANDS = ["train", "merge", "generate", "eval", "push", "pull", "check", "plugins", "inspect"]


def test_plugins_json_lists_builtins_with_distribution(plugins):
    result = run(plugins, "plugins", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    by_name = {p["name"]: p for p in data["plugins"]}
    formatters = by_name["adaptool.builtin.formatters"]
    assert formatters["distribution"] == "adaptool" and formatters["version"] == __version__
    assert formatters["registers"] == {
        "formatter": ["quote-tags", "text", "prompt-completion", "instruction", "chat"]
    }
    assert by_name["adaptool.builtin.commands"]["registers"]["commands"] == [
        "train",
        "generate",
        "eval",
        "merge",
        "push",
        "pull",
        "inspect",
        "ls",
        "check",
        "serve",
        "chat",
        "plugins",
    ]
    assert data["problems"] == [] and data["blocked"] == []


def test_plugins_table(plugins):
    result = run(plugins, "plugins")
    assert result.exit_code == 0
    assert "quote-tags" in result.output and "bnb-4bit" in result.output


PACKAGE_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "adaptool-shout"
version = "0.3.0"

[project.entry-points.adaptool]
shout = "adaptool_shout"
"""

PACKAGE_MODULE = """
import adaptool
from adaptool import Example, Formatter


class Shout(Formatter):
    name = "shout"

    class Options(adaptool.Options):
        column: str = "quote"

    def columns(self):
        return [self.options.column]

    def format(self, row, tokenizer):
        text = row[self.options.column]
        return Example("Shout: " + text + "\\n", text.upper())

    def generation_prompt(self, raw, tokenizer):
        text = raw if isinstance(raw, str) else raw[self.options.column]
        return "Shout: " + text + "\\n"


@adaptool.hookimpl
def register_formatters(register):
    register(Shout)
"""


def test_a_plugin_package_is_installed_used_and_uninstalled(tmp_path, tiny_bloom_dir):
    """A plugin package built here (pyproject + module), installed with `adaptool plugins
    install PATH` into adaptool's own environment (a fresh one that sees this one's packages),
    listed, used by check and train, then uninstalled."""
    import site
    import subprocess
    import sys
    import sysconfig

    from tests.helpers import recipe_file

    package = tmp_path / "adaptool-shout"
    package.mkdir()
    (package / "pyproject.toml").write_text(PACKAGE_PYPROJECT)
    (package / "adaptool_shout.py").write_text(PACKAGE_MODULE)
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    (Path(purelib) / "adaptool-tests.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in dict.fromkeys(ours))
    )

    def adaptool(*args):
        done = subprocess.run(
            [str(python), "-m", "adaptool", *map(str, args)], capture_output=True, text=True
        )
        return done.returncode, done.stdout + done.stderr

    code, out = adaptool("plugins", "install", package)
    assert code == 0, out
    assert (Path(purelib) / "adaptool_shout.py").is_file()  # in adaptool's environment
    code, out = adaptool("plugins", "--json")
    listed = {p["name"]: p for p in json.loads(out[out.index("{") :])["plugins"]}
    assert listed["shout"]["distribution"] == "adaptool-shout"
    assert listed["shout"]["version"] == "0.3.0"
    assert listed["shout"]["registers"] == {"formatter": ["shout"]}

    recipe = recipe_file(tmp_path, tiny_bloom_dir, steps=2)
    recipe.write_text(recipe.read_text().replace('formatter = "quote-tags"', 'formatter = "shout"'))
    code, out = adaptool("check", recipe, "--json")
    assert code == 0, out
    assert json.loads(out[out.index("{") :])["formatter"] == "shout"
    code, out = adaptool("train", recipe, "--output", tmp_path / "out")
    assert code == 0, out
    manifest = json.loads((tmp_path / "out" / "adaptool.json").read_text())
    assert manifest["formatter"]["name"] == "shout"
    assert manifest["formatter"]["distribution"] == "adaptool-shout"

    code, out = adaptool("plugins", "uninstall", "adaptool-shout")
    assert code == 0, out
    code, out = adaptool("plugins", "--json")
    assert "shout" not in {p["name"] for p in json.loads(out[out.index("{") :])["plugins"]}
    code, out = adaptool("check", recipe)
    assert code == 2 and "unknown formatter 'shout'" in out


def test_uninstalling_adaptool_itself_is_refused(plugins):
    result = run(plugins, "plugins", "uninstall", "adaptool")
    assert result.exit_code == 2 and "not adaptool itself" in result.output
