"""Serving many adapters from one base, measured on this machine.

(a) Memory: one `adaptool serve` engine holding the base and 4 LoRA adapters, against the 4
    merged models a user would otherwise load (each adapter folded into its own copy of the
    base), each side in a fresh process. Peak RSS, and the part above the libraries' imports.
(b) Throughput: 16 concurrent requests spread over the 4 adapters, sent through OpenAI's
    client to the server: mixed-adapter batches (--max-batch 16) against one request at a
    time (--max-batch 1), same server, alternated. Real (generated) tokens per second.

    python benchmarks/serve.py           # (a) BLOOM 16 x 1536 (~460 M params, fp32),
                                         # (b) BLOOM 16 x 1024 (~200 M), 2 rounds
    python benchmarks/serve.py --quick   # BLOOM 6 x 512, 1 round

Targets: memory <= 0.35x of 4 merged models; >= 3x tokens/s from batching. The last line is
`speedup: X` for (b).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from train_speed import build_base, cpu_model  # noqa: E402

ADAPTERS = 4
REQUESTS = 16
TOKENS = 32
PROMPTS = [
    "“Be yourself; everyone else is already taken.” ->:",
    "“So many books, so little time.” ->:",
    "“A room without books is like a body without a soul.” ->:",
    "“You only live once, but if you do it right, once is enough.” ->:",
]


def make_adapters(work: Path, base: Path) -> list[Path]:
    """Four LoRA adapters (r=16, every linear layer, random non-zero weights) saved by peft,
    and each one merged into its own copy of the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(ADAPTERS):
        torch.manual_seed(i + 1)
        model = AutoModelForCausalLM.from_pretrained(str(base))
        config = LoraConfig(
            r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        folder = work / f"adapter-{i}"
        peft_model.save_pretrained(str(folder))
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(str(work / f"merged-{i}"))
        paths.append(folder)
    return paths


MEASURE = r"""
import json, sys
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
import torch, transformers, peft
import adaptool.serving.server
imports = rss("VmRSS:")
side, work, base = sys.argv[1], sys.argv[2], sys.argv[3]
ids = torch.tensor([[5, 17, 33, 9, 100, 41, 7, 250]])
if side == "server":  # a forward through each adapter: every weight read, as serving does
    from adaptool.serving.server import open_engine
    engine = open_engine([(f"a{i}", f"{work}/adapter-{i}") for i in range(4)])
    with torch.no_grad():
        for i in range(4):
            engine.model(input_ids=ids, adapter_names=[f"a{i}"])
    held = [engine]
else:
    from transformers import AutoModelForCausalLM
    held = [AutoModelForCausalLM.from_pretrained(f"{work}/merged-{i}") for i in range(4)]
    with torch.no_grad():
        for model in held:
            model(input_ids=ids)
print(json.dumps({"imports": imports, "peak": rss("VmHWM:"), "now": rss("VmRSS:")}))
"""


def memory(work: Path, base: Path, side: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, side, str(work), str(base)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TOKENIZERS_PARALLELISM="false"),
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(url: str) -> tuple[float, int]:
    """Generated tokens per second for REQUESTS concurrent greedy requests over the adapters."""
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)

    def ask(i: int) -> int:
        reply = client.completions.create(
            model=f"a{i % ADAPTERS}",
            prompt=PROMPTS[i % len(PROMPTS)],
            max_tokens=TOKENS,
            temperature=0,
        )
        return reply.usage.completion_tokens

    began = time.monotonic()
    with ThreadPoolExecutor(REQUESTS) as pool:
        tokens = sum(pool.map(ask, range(REQUESTS)))
    return tokens / (time.monotonic() - began), tokens


@contextmanager
def served(work: Path, max_batch: int) -> Iterator[str]:
    """`adaptool serve` of the 4 adapters in its own process (the clients are in this one)."""
    from adaptool.serving.server import free_port

    port = free_port()
    adapters = [f"--adapter=a{i}={work / f'adapter-{i}'}" for i in range(ADAPTERS)]
    command = [sys.executable, "-m", "adaptool", "serve", *adapters, "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--max-queue", str(4 * REQUESTS)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                httpx.get(url + "/health")
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(process.stderr.read().decode()[-3000:]) from None
                time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller base, 1 round")
    args = parser.parse_args()
    # memory matters for bases that are large next to the libraries (about 400 MB here)
    hidden, layers, rounds = (512, 6, 1) if args.quick else (1024, 16, 2)
    big = (512, 6) if args.quick else (1536, 16)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp) / "memory"
        base = build_base(work, hidden=big[0], layers=big[1])
        make_adapters(work, base)
        server, merged = memory(work, base, "server"), memory(work, base, "merged")
        shutil.rmtree(work)
        print(
            f"(a) peak RSS: one base + {ADAPTERS} adapters {server['peak']:.0f} MB, "
            f"{ADAPTERS} merged models {merged['peak']:.0f} MB: "
            f"{server['peak'] / merged['peak']:.2f}x"
        )
        above = (server["peak"] - server["imports"]) / (merged["peak"] - merged["imports"])
        print(
            f"    above the imports ({server['imports']:.0f} / {merged['imports']:.0f} MB): "
            f"{server['peak'] - server['imports']:.0f} MB against "
            f"{merged['peak'] - merged['imports']:.0f} MB: {above:.2f}x"
        )

        work = Path(tmp) / "throughput"
        make_adapters(work, build_base(work, hidden=hidden, layers=layers))
        rates: dict[int, list[float]] = {1: [], REQUESTS: []}
        for round_ in range(rounds):
            for batch in (1, REQUESTS):
                with served(work, batch) as url:
                    throughput(url)  # warm-up
                    rate, tokens = throughput(url)
                    stats = httpx.get(url + "/metrics").json()
                rates[batch].append(rate)
                print(
                    f"  round {round_ + 1}, --max-batch {batch:2d}: {rate:7.1f} tokens/s "
                    f"({tokens} tokens; the server's largest batch {stats['largest_batch']}, "
                    f"{stats['mixed_batches']} mixed-adapter batches)"
                )
    alone, batched = statistics.median(rates[1]), statistics.median(rates[REQUESTS])
    print(
        f"(b) {REQUESTS} concurrent requests over {ADAPTERS} adapters: one at a time "
        f"{alone:.1f} tokens/s, batched {batched:.1f} tokens/s"
    )
    print(f"memory: {server['peak'] / merged['peak']:.2f}")
    print(f"speedup: {batched / alone:.2f}")


if __name__ == "__main__":
    main()
