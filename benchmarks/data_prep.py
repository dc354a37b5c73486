"""Data preparation at scale: format and tokenize generated quote -> tags rows, adaptool's way
(``load_source``, what ``adaptool train`` runs: a batched ``datasets.map`` in as many processes
as pay, cached by fingerprint, kept as a memory-mapped Arrow table) against the same work done
row by row into Python lists (each row formatted, its prompt and completion tokenized, the
example kept as lists of ints), side by side in fresh processes. A third side, reported on
its own line, is ``encode_rows`` as adaptool used it before (rows formatted one by one, then
tokenized in one batched call, Python lists). Each side runs cold (an empty datasets cache:
the JSON read too) and then again on the cache it left. Peak memory is the proportional set
size (PSS) of the process and its workers together, sampled every 20 ms, so pages forked
workers share are not counted twice; its anonymous part (Pss_Anon: what the kernel cannot
drop, unlike the pages of memory-mapped Arrow files it can read again) is reported beside it.

    python benchmarks/data_prep.py            # 200,000 rows
    python benchmarks/data_prep.py --quick    # 50,000 rows, under 3 minutes here

The last line is the headline: `speedup: <row-by-row cold seconds / adaptool cold seconds>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "recipes" / "assets" / "tiny-bloom"

WORKER = r"""
import json, os, sys, threading, time
import psutil

side, source, tokenizer_dir = sys.argv[1], sys.argv[2], sys.argv[3]
peak = {"pss": 0, "anon": 0}
done = threading.Event()

def rollup(pid):  # (Pss, Pss_Anon) of one process in bytes

    found = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Pss_Anon"):
                    found[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return found.get("Pss", 0), found.get("Pss_Anon", 0)

def sample():
    me = psutil.Process()
    while not done.is_set():
        pss = anon = 0
        for proc in [me, *me.children(recursive=True)]:
            a, b = rollup(proc.pid)
            pss, anon = pss + a, anon + b
        peak["pss"], peak["anon"] = max(peak["pss"], pss), max(peak["anon"], anon)
        time.sleep(0.02)

from transformers import AutoTokenizer
from adaptool.data import load_rows
from adaptool.encoding import encode_rows
from adaptool.plugins import load_plugins, use_plugins
from adaptool.recipe.schema import DataSection
from adaptool.training.sources import load_source

plugins = load_plugins(entry_points=False, strict=False, disabled=[])
use_plugins(plugins)
registry = plugins.registry
formatter = registry.create("formatter", "quote-tags", {})
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
data = DataSection(source=source, formatter="quote-tags", max_length=128)
watcher = threading.Thread(target=sample, daemon=True)
watcher.start()
time.sleep(0.05)
floor, anon_floor = peak["pss"], peak["anon"]
started = time.monotonic()
if side == "adaptool":
    prepared = load_source(data, formatter, tokenizer, 0, None)
    examples, tokens = len(prepared.train_set), prepared.train_set.tokens
    lengths = prepared.train_set.lengths  # what the batch plan reads
elif side == "row-by-row":  # each row formatted and tokenized on its own, into Python lists
    eos, encoded = tokenizer.eos_token_id, []
    for row in load_rows(data):
        example = formatter.format(row, tokenizer)
        prompt = tokenizer(example.prompt)["input_ids"]
        completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [eos]
        labels = [-100] * len(prompt) + completion
        labels[0] = -100
        ids, labels = (prompt + completion)[:128], labels[:128]
        if any(label != -100 for label in labels):
            encoded.append({"input_ids": ids, "labels": labels})
    examples, tokens = len(encoded), sum(len(e["input_ids"]) for e in encoded)
    lengths = [len(e["input_ids"]) for e in encoded]
else:  # adaptool before: rows formatted one by one, tokenized in one call, Python lists
    encoded, _ = encode_rows(load_rows(data), formatter, tokenizer, data)
    encoded = [e for e in encoded if e.trained_tokens > 0]
    examples, tokens = len(encoded), sum(len(e.input_ids) for e in encoded)
    lengths = [len(e.input_ids) for e in encoded]
seconds = time.monotonic() - started
time.sleep(0.05)
done.set()
watcher.join()
print(json.dumps({"seconds": seconds, "examples": examples, "tokens": tokens,
                  "peak_mb": peak["pss"] / 2**20, "floor_mb": floor / 2**20,
                  "anon_mb": peak["anon"] / 2**20, "anon_floor_mb": anon_floor / 2**20}))
"""

WORDS = """
the a of to and in is it you that he was for on are with as his they be at one have
this from or had by word but what some we can out other were all there when up use
your how said an each she which do their time if will way about many then them write
would like so these her long make thing see him two has look more day could go come
did number sound no most people my over know water than call first who may down side
been now find any new work part take get place made live where after back little only
round man year came show every good me give our under name very through just form
sentence great think say help low line differ turn cause much mean before move right
""".split()  # noqa: SIM905 (a list literal of 150 words is harder to read)
TAGS = "life love humor inspiration truth wisdom change hope friendship books art".split()  # noqa: SIM905


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            quote = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            tags = rng.sample(TAGS, rng.randint(1, 4))
            f.write(json.dumps({"quote": f"“{quote.capitalize()}.”", "tags": tags}) + "\n")


def run(side: str, source: Path, cache: Path) -> dict[str, float]:
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache), HF_HUB_OFFLINE="1")
    env["TOKENIZERS_PARALLELISM"] = "true"
    done = subprocess.run(
        [sys.executable, "-c", WORKER, side, str(source), str(TOKENIZER)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50,000 rows")
    parser.add_argument("--rows", type=int, default=None)
    args = parser.parse_args()
    rows = args.rows or (50_000 if args.quick else 200_000)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "quotes.jsonl"
        generate(source, rows)
        print(
            f"rows: {rows:,} generated quote -> tags rows ({source.stat().st_size / 2**20:.1f} MiB)"
        )
        results = {}
        for side in ("row-by-row", "lists", "adaptool"):
            cache = work / f"cache-{side}"
            cold = run(side, source, cache)
            cached = run(side, source, cache)
            results[side] = (cold, cached)
            print(
                f"{side:>10}: cold {cold['seconds']:7.2f} s, cached {cached['seconds']:7.2f} s, "
                f"peak {cold['peak_mb']:7.0f} MiB ({cold['peak_mb'] - cold['floor_mb']:6.0f} MiB "
                f"over the {cold['floor_mb']:.0f} MiB after imports; anonymous "
                f"{cold['anon_mb']:.0f} MiB), {cold['examples']:,} examples, "
                f"{cold['tokens']:,} tokens"
            )
    (base_cold, base_cached), (ours_cold, ours_cached) = results["row-by-row"], results["adaptool"]
    lists_cold, lists_cached = results["lists"]
    tokens = {side: cold["tokens"] for side, (cold, _) in results.items()}
    assert len(set(tokens.values())) == 1, f"the sides encoded different tokens: {tokens}"
    over = (ours_cold["peak_mb"] - ours_cold["floor_mb"]) / max(
        base_cold["peak_mb"] - base_cold["floor_mb"], 1e-9
    )
    print(f"cold: {base_cold['seconds'] / ours_cold['seconds']:.2f}x faster (target >= 3x)")
    print(f"cached: {base_cached['seconds'] / ours_cached['seconds']:.1f}x faster (target >= 20x)")
    anon = ours_cold["anon_mb"] / base_cold["anon_mb"]
    print(
        f"peak memory: {ours_cold['peak_mb'] / base_cold['peak_mb']:.2f}x of row by row "
        f"(target <= 0.5x); {over:.2f}x counting only what each side added after its imports; "
        f"anonymous (not file-backed) {anon:.2f}x"
    )
    print(
        f"against adaptool's previous way (formatted row by row, tokenized in one batched call, "
        f"Python lists): cold {lists_cold['seconds'] / ours_cold['seconds']:.2f}x, cached "
        f"{lists_cached['seconds'] / ours_cached['seconds']:.1f}x, peak memory "
        f"{ours_cold['peak_mb'] / lists_cold['peak_mb']:.2f}x"
    )
    print(f"speedup: {base_cold['seconds'] / ours_cold['seconds']:.2f}")


if __name__ == "__main__":
    main()
