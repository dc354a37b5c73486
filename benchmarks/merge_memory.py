"""Peak memory and wall time of `adaptool merge` (streamed) against peft's
`merge_and_unload()` + `save_pretrained()`, measured side by side in one run (A/B/A/B, each in
a fresh process), on a ~210M-parameter BLOOM (about 840 MB in fp32, 5 safetensors shards) with
a LoRA adapter. Also checks that both write bit-identical weights.

    python benchmarks/merge_memory.py            # ~210M params
    python benchmarks/merge_memory.py --quick    # the same model, one round: about a minute
    python benchmarks/merge_memory.py --small    # ~46M params (peak RSS is then mostly imports)

The last line is the headline: `memory_ratio: <adaptool peak RSS / peft peak RSS>`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEFT = """
import json, sys, time
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
from adaptool.testing import peak_rss_mb, rss_mb
base, adapter, out, shard = sys.argv[1:5]
baseline = rss_mb()
started = time.monotonic()
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out, max_shard_size=shard)
print(json.dumps({"seconds": time.monotonic() - started, "peak": peak_rss_mb(),
                  "baseline": baseline}))
"""

ADAPTOOL = """
import json, sys, time
import torch, peft, transformers
from pathlib import Path
from adaptool.merging.merge import merge
from adaptool.plugins import load_plugins, use_plugins
from adaptool.testing import peak_rss_mb, rss_mb
base, adapter, out, shard = sys.argv[1:5]
use_plugins(load_plugins(entry_points=False))
baseline = rss_mb()
started = time.monotonic()
merge(Path(adapter), output=out, base=base, dtype="fp32", verify=False)
print(json.dumps({"seconds": time.monotonic() - started, "peak": peak_rss_mb(),
                  "baseline": baseline}))
"""

# the floor: copying the base's shards unchanged (kernel file-to-file copy), which writes the
# same number of bytes as either merge
COPY = """
import json, shutil, sys, time
from pathlib import Path
from adaptool.testing import peak_rss_mb, rss_mb
base, adapter, out, shard = sys.argv[1:5]
baseline = rss_mb()
started = time.monotonic()
Path(out).mkdir()
for path in sorted(Path(base).glob("*.safetensors")):
    shutil.copyfile(path, Path(out) / path.name)
print(json.dumps({"seconds": time.monotonic() - started, "peak": peak_rss_mb(),
                  "baseline": baseline}))
"""


def build(work: Path, *, hidden: int, layers: int, vocab: int, shard: str) -> tuple[Path, Path]:
    from adaptool.testing import make_sharded_base_with_adapter

    base, adapter = make_sharded_base_with_adapter(
        work, hidden_size=hidden, n_layer=layers, shard=shard, vocab_size=vocab, r=16
    )
    shards = sorted(base.glob("model-*.safetensors"))
    size = sum(p.stat().st_size for p in shards) / 2**20
    params = size * 2**20 / 4
    print(
        f"base: BLOOM {layers} x {hidden}, vocab {vocab}: {params / 1e6:.0f} M params, "
        f"{size:.0f} MB fp32 in {len(shards)} shards"
    )
    return base, adapter


def run(code: str, base: Path, adapter: Path, out: Path, shard: str) -> dict[str, float]:
    os.sync()  # each run starts with no dirty pages of the previous one still being written
    done = subprocess.run(
        [sys.executable, "-c", code, str(base), str(adapter), str(out), shard],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def identical(a: Path, b: Path) -> tuple[bool, int]:
    import torch
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, Path]:
        found = {}
        for path in folder.glob("*.safetensors"):
            with safe_open(str(path), framework="pt") as fh:
                found.update(dict.fromkeys(fh.keys(), path))
        return found

    left, right = tensors(a), tensors(b)
    if set(left) != set(right):
        return False, 0
    for key, path in left.items():
        with (
            safe_open(str(path), framework="pt") as x,
            safe_open(str(right[key]), framework="pt") as y,
        ):
            if not torch.equal(x.get_tensor(key), y.get_tensor(key)):
                return False, len(left)
    return True, len(left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one A/B round")
    parser.add_argument("--small", action="store_true", help="a ~46M-parameter model")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds")
    parser.add_argument(
        "--dir",
        default=None,
        help="where base and outputs go (default: the system's temp dir; /dev/shm takes the "
        "disk's write speed out of the comparison)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    if args.small:
        size = {"hidden": 512, "layers": 12, "vocab": 16000, "shard": "40MB"}
    else:
        size = {"hidden": 1024, "layers": 14, "vocab": 32000, "shard": "180MB"}
    with tempfile.TemporaryDirectory(prefix="merge-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        started = time.monotonic()
        base, adapter = build(
            work,
            hidden=size["hidden"],
            layers=size["layers"],
            vocab=size["vocab"],
            shard=size["shard"],
        )
        print(f"built in {time.monotonic() - started:.0f} s; {args.rounds} A/B rounds")
        results: dict[str, list[dict[str, float]]] = {"peft": [], "adaptool": [], "copy": []}
        for round_ in range(args.rounds):
            for name, code in (("peft", PEFT), ("adaptool", ADAPTOOL), ("copy", COPY)):
                out = work / f"{name}-{round_}"
                results[name].append(run(code, base, adapter, out, size["shard"]))
                print(
                    f"  round {round_ + 1} {name:<9} peak RSS {results[name][-1]['peak']:7.0f} MB"
                    f"  wall {results[name][-1]['seconds']:6.2f} s"
                )
                if round_ or name == "copy":  # only the first outputs are compared
                    shutil.rmtree(out)
        same, count = identical(work / "peft-0", work / "adaptool-0")

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print()
    print(f"{'':<34}{'peft merge_and_unload':>22}{'adaptool merge':>16}{'ratio':>8}")
    rows = [
        ("peak RSS (MB)", med("peft", "peak"), med("adaptool", "peak")),
        (
            "peak RSS above imports (MB)",
            med("peft", "peak") - med("peft", "baseline"),
            med("adaptool", "peak") - med("adaptool", "baseline"),
        ),
        ("wall time (s)", med("peft", "seconds"), med("adaptool", "seconds")),
    ]
    for label, theirs, ours in rows:
        print(f"{label:<34}{theirs:>22.1f}{ours:>16.1f}{ours / theirs:>8.2f}")
    floor = med("copy", "seconds")
    theirs, ours = med("peft", "seconds") / floor, med("adaptool", "seconds") / floor
    print(
        f"floor: copying the base's shards unchanged takes {floor:.1f} s; peft's merge is "
        f"{theirs:.1f}x that, adaptool's {ours:.1f}x"
    )
    print(
        f"speedup: {med('peft', 'seconds') / med('adaptool', 'seconds'):.2f}x faster; "
        f"weights bit-identical: {same} ({count} tensors)"
    )
    print(f"memory_ratio: {med('adaptool', 'peak') / med('peft', 'peak'):.2f}")


if __name__ == "__main__":
    main()
