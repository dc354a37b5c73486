"""adaptool train on the command line: Ctrl-C, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.helpers import (
    DATA,
    recipe_file,
)


def test_ctrl_c_on_the_cli_leaves_a_resumable_checkpoint(tmp_path, tiny_bloom_dir):
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=100000)
    cmd = [sys.executable, "-c", "from adaptool.cli import main; main()", "train", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "a checkpoint is saved" in output and "--resume" in output
    assert "Traceback" not in output
    from adaptool.training.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(tmp_path / "out")
    step = int(checkpoint.name.split("-")[1])
    assert step >= 3
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert step == max(logged)  # the checkpoint is at the last finished step
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == step
    # resume with a reachable end
    from adaptool.plugins import load_plugins, use_plugins

    use_plugins(load_plugins(entry_points=False))
    recipe = load_recipe(path, [f"training.max_steps={step + 2}"])
    done = train(recipe, resume=True)
    assert done.step == step + 2 and (tmp_path / "out" / "adaptool.json").is_file()


def test_cli_train_errors_are_exit_2(tmp_path, tiny_bloom_dir, plugins):
    from typer.testing import CliRunner

    from adaptool.cli import build_app

    path = recipe_file(tmp_path, tiny_bloom_dir, source=DATA / "text.csv")
    result = CliRunner().invoke(build_app(plugins), ["train", str(path)])
    assert result.exit_code == 2 and "no column 'quote'" in result.output
    assert "Traceback" not in result.output
