"""Scaling across processes: `adaptool train` in 1 and in 2 processes (DDP, and FSDP, through
accelerate, gloo on this CPU) on the same base, data, LoRA and effective batch (2 processes x
accumulation 2 against 1 process x accumulation 4), alternated in fresh runs. Prints real
(non-padding) tokens/s of each, and the scaling efficiency: tokens/s with 2 processes over
twice the tokens/s with 1 (DDP's last; FSDP's on the line before the speedup).

    python benchmarks/scaling.py           # 20M-param BLOOM, 30 steps per run, 2 rounds
    python benchmarks/scaling.py --quick   # 10 steps, 1 round

Each process gets an equal share of the machine's cores (torch threads = cores / processes),
so the comparison is of the same hardware split two ways: on a 2-core machine the best
possible efficiency is what two single-core processes reach against one two-core process,
and gradient all-reduce over gloo comes on top. The last line is `efficiency: X`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_speed import DATA, build_base, cpu_model  # noqa: E402


def recipe(work: Path, base: Path, steps: int, accumulation: int, name: str) -> Path:
    path = work / f"{name}.toml"
    path.write_text(
        f"""
[model]
name = "{base}"

[peft]
r = 16
alpha = 32
dropout = 0.05

[data]
source = "{DATA}"
formatter = "quote-tags"
train_on_prompt = true

[training]
batch_size = 4
gradient_accumulation_steps = {accumulation}
learning_rate = 2e-3
warmup_steps = 2
max_steps = {steps}
logging_steps = 1
save_steps = 0
seed = 0

[output]
dir = "{work / name}"
"""
    )
    return path


def run(path: Path, nproc: int, strategy: str = "ddp") -> dict[str, float]:
    cores = os.cpu_count() or 1
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // nproc)), CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "adaptool", "train", str(path), "--overwrite"]
    command += ["--nproc", str(nproc)] if nproc > 1 else []
    command += ["--set", f'distributed.strategy="{strategy}"']
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    out = Path(path.read_text().split('dir = "')[1].split('"')[0])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_s" in r]
    tokens = seconds = 0.0
    for before, r in itertools.pairwise(steps):  # the first step (warm-up) is left out
        tokens += r["tokens"] - before["tokens"]
        seconds += (r["tokens"] - before["tokens"]) / r["tokens_per_s"]
    return {"tokens": tokens, "seconds": seconds, "loss": steps[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 steps, 1 round")
    args = parser.parse_args()
    steps, rounds = (10, 1) if args.quick else (30, 2)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores")
    sides = {
        "1 process": (1, "ddp"),
        "2 processes, DDP": (2, "ddp"),
        "2 processes, FSDP": (2, "fsdp"),
    }
    rates: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        base = build_base(work, hidden=512, layers=6)
        one = recipe(work, base, steps, 4, "one")
        two = recipe(work, base, steps, 2, "two")
        for round_ in range(rounds):
            for side, (nproc, strategy) in sides.items():
                r = run(one if nproc == 1 else two, nproc, strategy)
                rates[side].append(r["tokens"] / r["seconds"])
                print(
                    f"  round {round_ + 1}, {side}: "
                    f"{rates[side][-1]:8.0f} real tokens/s  loss {r['loss']:.4f}"
                )
    single, double, sharded = (statistics.median(rates[side]) for side in sides)
    print(
        f"1 process: {single:.0f} real tokens/s; 2 processes: {double:.0f} (DDP), "
        f"{sharded:.0f} (FSDP: every block's weights gathered for its forward and backward)"
    )
    print(f"fsdp efficiency: {sharded / (2 * single):.2f}")
    print(f"speedup: {double / single:.2f}")
    print(f"efficiency: {double / (2 * single):.2f}")


if __name__ == "__main__":
    main()
