"""kill -9 at random points and at injected points inside checkpoint and final saves: a run
resumed with --resume (or started again where nothing was saved) ends with the adapter an
uninterrupted run ends with, bit for bit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.helpers import recipe_file

#: runs `adaptool train` in a subprocess that SIGKILLs itself at an injected point
PRELUDE = """
import os, signal, sys
point = os.environ.get("ADAPTOOL_TEST_KILL_AT")
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "checkpoint":  # the checkpoint's files synced, not yet renamed into place
    import adaptool.training.checkpoint as checkpoint
    real = checkpoint._sync_tree
    def sync_then_die(folder):
        real(folder)
        die()
    checkpoint._sync_tree = sync_then_die
elif point == "final":  # the adapter moved in, adaptool.json not yet
    import adaptool.training.finish as finish
    finish.write_manifest = die
from adaptool.cli import main
sys.argv = ["adaptool", *sys.argv[1:]]
main()
"""


def _train(path, *args, kill_at=None, after=None):
    env = dict(os.environ)
    env.pop("ADAPTOOL_TEST_KILL_AT", None)
    if kill_at:
        env["ADAPTOOL_TEST_KILL_AT"] = kill_at
    command = [sys.executable, "-c", PRELUDE, "train", str(path), *args]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if after is not None:
        time.sleep(after)
        process.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def _finish(path):
    """Resume until done; a run killed before its first checkpoint starts again."""
    for _ in range(3):
        code, output = _train(path, "--resume")
        if code == 0:
            return output
        assert code == 2 and "no checkpoint to resume from" in output, output
        code, output = _train(path, "--overwrite")
        if code == 0:
            return output
    raise AssertionError(output)


def _adapter(out):
    return load_file(str(out / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bloom_dir):
    folder = tmp_path_factory.mktemp("reference")
    path = recipe_file(folder, tiny_bloom_dir, steps=12)
    started = time.monotonic()
    code, output = _train(path)
    assert code == 0, output
    return _adapter(folder / "out"), time.monotonic() - started


def _same(a, b):
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("point", ["checkpoint", "final"])
def test_killed_inside_a_save_then_resumed_ends_bit_identical(
    tmp_path, tiny_bloom_dir, reference, point
):
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=12)
    code, output = _train(path, kill_at=point)
    assert code == -signal.SIGKILL, output
    out = tmp_path / "out"
    assert not (out / "adaptool.json").exists()
    _finish(path)
    assert (out / "adaptool.json").is_file()
    assert _same(_adapter(out), reference[0])


@pytest.mark.parametrize("seed", [1, 2])
def test_killed_at_a_random_moment_then_resumed_ends_bit_identical(
    tmp_path, tiny_bloom_dir, reference, seed
):
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=12)
    when = random.Random(seed).uniform(0.5, reference[1])
    code, _ = _train(path, after=when)
    _finish(path)
    out = tmp_path / "out"
    assert (out / "adaptool.json").is_file()
    assert _same(_adapter(out), reference[0]), f"killed after {when:.2f} s (exit {code})"
