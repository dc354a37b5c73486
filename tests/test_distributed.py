"""Training in two processes (torchrun, gloo, CPU): DDP and FSDP through accelerate. Both
processes train; together they take the batches one process with twice the accumulation
takes, so the adapter is that run's within fp32 rounding; only the main process writes; the
adapter loads in plain peft; a resume in another number of processes is refused."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from adaptool.distributed import World, all_sum, any_true, current, from_main
from adaptool.recipe import load_recipe
from adaptool.training.run import train
from tests.helpers import recipe_file, records

SAME = ["peft.dropout=0.0", 'training.precision="fp32"', "training.save_steps=3"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(recipe, *args, nproc=2, timeout=600):
    """``torchrun --nproc-per-node N -m adaptool train RECIPE ...`` on this machine."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={_port()}",
        "-m",
        "adaptool",
        "train",
        str(recipe),
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_world_of_one_needs_no_collectives(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert current() == World() and current().main and not current().distributed
    assert all_sum([1, 2.5]) == [1.0, 2.5] and not any_true(False) and from_main(3) == 3
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert current() == World(rank=2, size=4, local_rank=0) and not current().main
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")  # accelerate launch on CPUs runs mpirun
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    assert current() == World(rank=1, size=2, local_rank=1)


BEST = '[callbacks.best-checkpoint]\nmetric = "eval_loss"'


@pytest.mark.parametrize(
    ("strategy", "backend", "extra"),
    [
        ("ddp", "none", ""),
        ("fsdp", "none", ""),
        ("fsdp", "bnb-4bit", ""),
        ("fsdp", "none", BEST),
    ],
    ids=["ddp", "fsdp", "fsdp-qlora", "fsdp-best-checkpoint"],
)
def test_two_processes_train_what_one_process_with_twice_the_accumulation_does(
    tmp_path, tiny_bloom_dir, plugins, strategy, backend, extra
):
    """DDP (each process the whole model) and FSDP (the base, adapter and optimizer state
    split between the two, on gloo; with QLoRA, the 4-bit weights stored in a float
    container and split too; with a callback that saves the best adapter at evaluations)
    all give the single-process adapter. The tolerance is fp32 rounding: the same sums in
    another order (gradients added across processes; the single process takes the step's 8
    rows in one micro-batch, FSDP's processes in micro-batches of 2 rows), which Adam's
    normalised updates carry into the weights over the steps: 2e-4 is under 1 % of one
    step's update at this learning rate (3e-2); the per-step losses agree to 1e-6."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    (tmp_path / "one").mkdir()
    one = train(
        load_recipe(
            recipe_file(tmp_path / "one", tiny_bloom_dir, steps=6, backend=backend, extra=extra),
            [*SAME, "training.gradient_accumulation_steps=4"],  # 2 x 2 processes
        )
    )
    (tmp_path / "two").mkdir()
    path = recipe_file(tmp_path / "two", tiny_bloom_dir, steps=6, backend=backend, extra=extra)
    sets = [*SAME, f'distributed.strategy="{strategy}"']
    done = torchrun(path, *[a for s in sets for a in ("--set", s)])
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "two" / "out"
    manifest = json.loads((out / "adaptool.json").read_text())
    assert manifest["training"]["world_size"] == 2
    assert manifest["training"]["strategy"] == strategy
    if strategy == "fsdp":  # each process holds about half of the weights (4-bit ones too)
        held = re.search(r"this one holds ([\d.]+)% of its weights", done.stdout + done.stderr)
        assert held and 40 < float(held[1]) < 60, done.stdout[-2000:]
    assert manifest["training"]["effective_batch"] == 2 * 2 * 2
    a = load_file(one.output_dir / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-4
    losses = [r["loss"] for r in records(out) if "loss" in r]
    assert losses == pytest.approx([r["loss"] for r in records(one.output_dir) if "loss" in r])
    assert sorted(p.name for p in tmp_path.joinpath("two").iterdir()) == ["out", "r.toml"]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_bloom_dir))
    assert isinstance(PeftModel.from_pretrained(base, str(out)), PeftModel)


def cli(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "adaptool", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_two_process_run_resumed_from_its_checkpoint_ends_where_it_ended(
    tmp_path, tiny_bloom_dir, plugins, strategy
):
    """adaptool train --nproc 2, then --resume from its step-3 checkpoint: steps 4-6 again,
    in two processes, give the adapter the uninterrupted run gave — with dropout on, so each
    process's generator is restored, not only the main one's. Under FSDP the checkpoint
    holds the adapter and optimizer state whole, gathered from the shards and split again."""
    from safetensors.torch import load_file

    path = recipe_file(tmp_path, tiny_bloom_dir, steps=6)
    settings = [*SAME, "peft.dropout=0.2", f'distributed.strategy="{strategy}"']
    sets = [a for s in settings for a in ("--set", s)]
    first = cli("train", str(path), "--nproc", "2", *sets)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("done: 6 steps") == 1  # the main process reports
    whole = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert (tmp_path / "out" / "checkpoints" / "step-0000003").is_dir()
    again = cli("train", str(path), "--nproc", "2", "--resume", *sets)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr
    resumed = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) < 1e-6


def test_a_resume_in_another_number_of_processes_is_refused_once(tmp_path, tiny_bloom_dir, plugins):
    """A checkpoint of one process resumed in two: refused (exit 2), and the message both
    processes hit is printed once."""
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=6)
    done = train(load_recipe(path, SAME))
    assert done.step == 6
    refused = cli(
        "train", str(path), "--nproc", "2", "--resume", *[a for s in SAME for a in ("--set", s)]
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.count("trained in 1 process, this one runs in 2") == 1
    assert "Traceback" not in refused.stderr


def test_deepspeed_is_refused_once_and_a_single_process_ignores_the_strategy(
    tmp_path, tiny_bloom_dir, plugins
):
    """Refused in one paragraph (exit 2), printed once, nothing written; one process has
    nothing to share and trains whatever the strategy."""
    path = recipe_file(tmp_path, tiny_bloom_dir, steps=1)
    refused = cli("train", str(path), "--nproc", "2", "--set", 'distributed.strategy="deepspeed"')
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.count('distributed.strategy = "deepspeed"') == 1
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "out").exists()
    assert train(load_recipe(path, ['distributed.strategy="deepspeed"'])).step == 1


def test_fsdp_refuses_what_it_cannot_shard_with_the_reason(tmp_path, tiny_bloom_dir, plugins):
    """LoHa's module_dropout drops a different set of modules on each process, which FSDP's
    gradient reduction cannot take: refused, naming it, before anything is written."""
    from tests.helpers import method_recipe

    lines = 'r = 4\nmodule_dropout = 0.5\ntarget_modules = "all-linear"'
    path = method_recipe(tmp_path, tiny_bloom_dir, "loha", lines, steps=1)
    refused = cli("train", str(path), "--nproc", "2", "--set", 'distributed.strategy="fsdp"')
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.count("module_dropout > 0") == 1
    assert "Traceback" not in refused.stderr and not (tmp_path / "out").exists()


def test_check_plans_for_several_processes(tmp_path, tiny_bloom_dir, plugins):
    from adaptool.check import check

    report = check(load_recipe(recipe_file(tmp_path, tiny_bloom_dir)), processes=4)
    assert report.world["processes"] == 4 and report.world["strategy"] == "ddp"
    assert report.world["effective_batch"] == 2 * 2 * 4
    assert "the whole base" in report.world["each_holds"]
    sharded = check(
        load_recipe(recipe_file(tmp_path, tiny_bloom_dir), ['distributed.strategy="fsdp"']),
        processes=2,
    )
    assert sharded.world["strategy"] == "fsdp" and "1/2 of the base" in sharded.world["each_holds"]
    assert not any("fsdp" in w for w in sharded.warnings)
    zero = check(
        load_recipe(recipe_file(tmp_path, tiny_bloom_dir), ['distributed.strategy="deepspeed"']),
        processes=2,
    )
    assert any("deepspeed" in w for w in zero.warnings)
    eight = check(
        load_recipe(
            recipe_file(tmp_path, tiny_bloom_dir, backend="bnb-8bit"),
            ['distributed.strategy="fsdp"'],
        ),
        processes=2,
    )
    assert any("LLM.int8" in w for w in eight.warnings)


def test_ctrl_c_stops_every_process_at_one_step_and_the_resume_ends_where_it_would(
    tmp_path, tiny_bloom_dir, plugins
):
    """Ctrl-C to the whole launched world (what a terminal sends): every process stops after
    the same step, the main one writes one checkpoint, exit 130; --resume then ends with the
    adapter an uninterrupted two-process run ends with."""
    import signal
    import time

    from safetensors.torch import load_file

    sets = [
        a for s in [*SAME, "training.max_steps=60", "training.save_steps=0"] for a in ("--set", s)
    ]
    (tmp_path / "whole").mkdir()
    whole_recipe = recipe_file(tmp_path / "whole", tiny_bloom_dir)
    whole = cli("train", str(whole_recipe), "--nproc", "2", *sets)
    assert whole.returncode == 0, whole.stderr[-3000:]
    path = recipe_file(tmp_path, tiny_bloom_dir)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "adaptool", "train", str(path), "--nproc", "2", *sets]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics = tmp_path / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 130, err[-3000:]
    assert out.count("interrupted at step") == 1 and "Traceback" not in err
    checkpoints = list((tmp_path / "out" / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1
    resumed = cli("train", str(path), "--nproc", "2", "--resume", *sets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(tmp_path / "whole" / "out" / "adapter_model.safetensors")
    b = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_a_method_that_skips_modules_at_random_trains_in_two_processes(
    tmp_path, tiny_bloom_dir, plugins
):
    """LoHa's module_dropout leaves a module's parameters out of some steps: DDP is told,
    instead of stopping at the next step for gradients that never came."""
    from tests.helpers import method_recipe

    lines = 'r = 4\nmodule_dropout = 0.9\ntarget_modules = "all-linear"'
    path = method_recipe(tmp_path, tiny_bloom_dir, "loha", lines, steps=3)
    done = cli("train", str(path), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
