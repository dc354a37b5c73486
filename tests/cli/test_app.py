"""The command line as a user meets it: help, version, plugins, errors, commands not yet built."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
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


def _full_disk(path):
    def write(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return write


def test_a_full_disk_is_one_paragraph_and_exit_2_in_train_checkpoint_and_merge(
    tmp_path, tiny_bloom_dir, plugins, monkeypatch
):
    """Disk full at the final save, at a checkpoint, and at a merge's write: no traceback."""
    import adaptool.merging.merge as merging
    import adaptool.training.checkpoint as checkpoint
    import adaptool.training.finish as finish
    from tests.helpers import recipe_file

    app = build_app(plugins)
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=5)
    out = tmp_path / "out"
    cases = [
        (finish, "write_manifest", ["train", path, "--overwrite"]),
        (checkpoint, "_sync_tree", ["train", path, "--overwrite"]),
    ]
    for module, name, args in cases:
        with monkeypatch.context() as patch:
            patch.setattr(module, name, _full_disk(out / "adaptool.json"))
            result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        assert "the disk is full" in result.output and "--resume" in result.output
        assert "Traceback" not in result.output
    trained = CliRunner().invoke(app, ["train", str(path), "--overwrite"])
    assert trained.exit_code == 0, trained.output
    with monkeypatch.context() as patch:
        patch.setattr(merging, "write_streamed", _full_disk(tmp_path / "m" / "model.safetensors"))
        merged = CliRunner().invoke(app, ["merge", str(out), "--output", str(tmp_path / "m")])
    assert merged.exit_code == 2 and "the disk is full" in merged.output, merged.output
    assert not (tmp_path / "m").exists() and not (tmp_path / ".m.tmp").exists()


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_file(plugins):
    import re

    import typer

    app = build_app(plugins)

    @app.command("boom")
    def boom() -> None:
        raise ZeroDivisionError("the plugin divided by zero")

    result = CliRunner().invoke(app, ["boom"])
    assert result.exit_code == 1
    assert "failed unexpectedly: ZeroDivisionError: the plugin divided by zero" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    saved = re.search(r"the full traceback is in (\S+\.txt)", result.output)
    assert "Traceback (most recent call last)" in Path(saved[1]).read_text()
    assert isinstance(app, typer.Typer)

    @app.command("leak")
    def leak() -> None:
        raise ValueError("GET https://carol:s3cret@mirror.example/api failed")

    leaked = CliRunner().invoke(app, ["leak"])
    saved = Path(re.search(r"the full traceback is in (\S+\.txt)", leaked.output)[1])
    assert "s3cret" not in leaked.output and "s3cret" not in saved.read_text()
    assert saved.stat().st_mode & 0o077 == 0  # only its owner can read it


def test_running_out_of_memory_is_advice_not_a_bug(plugins):
    app = build_app(plugins)

    @app.command("hungry")
    def hungry() -> None:
        raise MemoryError()

    result = CliRunner().invoke(app, ["hungry"])
    assert result.exit_code == 2 and "does not fit in memory" in result.output
    assert "batch_size" in result.output and "bug" not in result.output


def test_a_read_only_output_is_one_paragraph_and_exit_2(
    tmp_path, tiny_bloom_dir, plugins, monkeypatch
):
    """A read-only file system where the output goes (injected at adaptool's first write into
    it, as running as root defeats permissions): exit 2, the folder named, no traceback."""
    import adaptool.training.run as run
    from tests.helpers import recipe_file

    path = recipe_file(tmp_path, tiny_bloom_dir, steps=1)
    out = tmp_path / "out"

    def read_only(folder, command):
        raise OSError(errno.EROFS, "Read-only file system", str(folder / ".adaptool"))

    monkeypatch.setattr(run, "mark", read_only)
    result = CliRunner().invoke(build_app(plugins), ["train", str(path)])
    assert result.exit_code == 2, result.output
    assert "the file system is read-only" in result.output and str(out) in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB file system (tmpfs), where the machine lets the tests mount one (as
    root); elsewhere the injected ENOSPC tests above stand in."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_real_full_disk_mid_training_is_one_paragraph_and_exit_2(
    small_disk, tmp_path, tiny_bloom_dir, plugins
):
    from tests.helpers import recipe_file

    path = recipe_file(tmp_path, tiny_bloom_dir, steps=12)
    out = small_disk / "run"
    result = CliRunner().invoke(build_app(plugins), ["train", str(path), "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert "the disk is full" in result.output and "Traceback" not in result.output
    assert not (out / "adaptool.json").exists()
