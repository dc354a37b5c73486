"""The command line as a user meets it: help, version, plugins, errors, commands not yet built."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from adaptool import __version__
from adaptool.cli import build_app
from tests.helpers import REPO, write_recipe

COMMANDS = ["train", "merge", "generate", "eval", "push", "pull", "check", "plugins", "inspect"]


def run(plugins, *args):
    return CliRunner().invoke(build_app(plugins), list(args))


def test_help_lists_every_command(plugins):
    result = run(plugins, "--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f" {command} " in result.output


def test_version(plugins):
    result = run(plugins, "--version")
    assert result.exit_code == 0 and result.output.strip() == f"adaptool {__version__}"


def test_help_imports_neither_torch_nor_transformers():
    code = (
        "import sys\n"
        "from adaptool.cli import main\n"
        "sys.argv = ['adaptool', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("adaptool", path=str(REPO / ".venv" / "bin")) or shutil.which("adaptool")
    assert exe, "the adaptool console script is not on PATH"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"adaptool {__version__}"


def test_train_validates_the_recipe_first(plugins, tmp_path):
    bad = write_recipe(tmp_path, "[model]\nname = 'x'\n")
    result = run(plugins, "train", str(bad))
    assert result.exit_code == 2 and "missing section: add a [data] table" in result.output
    assert not (tmp_path / "out").exists()


def test_strict_mode_with_a_broken_plugin_is_a_clean_exit_2(tmp_path):
    from adaptool.testing import install_fake_plugin

    site = install_fake_plugin(
        tmp_path,
        distribution="fake-broken",
        module="fake_broken_cli",
        source="raise ImportError('needs libfoo')\n",
    )
    code = "from adaptool.cli import main\nmain()\n"
    env = {"PYTHONPATH": str(site), "ADAPTOOL_STRICT_PLUGINS": "1", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code, "--help"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 2
    assert "fake-broken" in out.stderr and "Traceback" not in out.stderr
    env.pop("ADAPTOOL_STRICT_PLUGINS")
    out = subprocess.run(
        [sys.executable, "-c", code, "plugins"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "warning: plugin 'fake_broken_cli' from fake-broken: failed to import" in out.stderr
    assert "skipped: plugin 'fake_broken_cli'" in out.stdout
