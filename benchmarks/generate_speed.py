"""Generation throughput with adaptool's `generate()` (KV cache, left-padded batches): batch 8
against batch 1, and a merged model against the same adapter unmerged, measured side by side
in one run (A/B/A/B) on a ~200M-parameter BLOOM with a LoRA adapter.

    python benchmarks/generate_speed.py            # ~200M params
    python benchmarks/generate_speed.py --quick    # ~46M params, under a minute
    python benchmarks/generate_speed.py --dtype fp32 --target-modules query_key_value

Both models run in the dtype adaptool's precision "auto" picks on this machine (bf16 on a CPU
with native bf16, else fp32) unless --dtype says otherwise; the adapter is LoRA r=16 on all
linear layers (as adaptool's recipes) unless --target-modules says otherwise.

The last line is the headline: `speedup: <batch-8 tokens/s / batch-1 tokens/s>`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "“Knowledge is power.” ->: ",
    "“Books are the quietest and most constant of friends.” ->: ",
    "“The only thing we have to fear is fear itself.” ->: ",
    "“Well done is better than well said.” ->: ",
    "“A journey of a thousand miles begins with a single step.” ->: ",
    "“Lost time is never found again.” ->: ",
    "“Brevity is the soul of wit.” ->: ",
    "“The unexamined life is not worth living.” ->: ",
]


def tokens_per_second(model, tokenizer, *, batch_size: int, new_tokens: int) -> float:
    import torch

    from adaptool.generate import generate

    torch.manual_seed(0)
    started = time.monotonic()
    results = generate(model, tokenizer, PROMPTS, max_new_tokens=new_tokens, batch_size=batch_size)
    elapsed = time.monotonic() - started
    return sum(r.tokens for r in results) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~46M-parameter model")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="weights of both models; auto: what adaptool's precision 'auto' picks here (bf16 "
        "on a CPU with native bf16, else fp32)",
    )
    parser.add_argument(
        "--target-modules",
        default="all-linear",
        help="the LoRA's layers: all-linear (as adaptool's recipes) or query_key_value (the "
        "notebook's)",
    )
    args = parser.parse_args()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptool.merging.merge import merge
    from adaptool.modeling import quiet_libraries, resolve_precision
    from adaptool.plugins import load_plugins, use_plugins
    from adaptool.testing import make_sharded_base_with_adapter, make_tokenizer

    quiet_libraries()
    use_plugins(load_plugins(entry_points=False))
    if args.dtype == "auto":
        args.dtype = resolve_precision("auto") if resolve_precision("auto") == "bf16" else "fp32"
    size = (512, 12, "40MB") if args.quick else (1024, 14, "180MB")
    with tempfile.TemporaryDirectory(prefix="generate-bench-") as tmp:
        work = Path(tmp)
        tokenizer = make_tokenizer(None, PROMPTS * 20, vocab_size=2000)
        base, adapter = make_sharded_base_with_adapter(
            work,
            tokenizer=tokenizer,
            hidden_size=size[0],
            n_layer=size[1],
            shard=size[2],
            vocab_size=32000,
            r=16,
            target_modules=args.target_modules,
        )
        merged_dir = work / "merged"
        merge(
            adapter,
            output=merged_dir,
            base=str(base),
            dtype=args.dtype,  # as adaptool merges an adapter trained in that dtype
            verify=False,
        )
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        unmerged = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype), str(adapter)
        ).eval()
        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=dtype).eval()
        params = sum(p.numel() for p in merged.parameters()) / 1e6
        print(
            f"BLOOM {size[1]} x {size[0]}: {params:.0f} M params; {len(PROMPTS)} prompts, "
            f"{args.new_tokens} new tokens each, greedy, {args.dtype}; LoRA r=16 on "
            f"{args.target_modules}; "
            f"{args.rounds} rounds"
        )
        runs: dict[str, list[float]] = {}
        cases = [
            ("unmerged batch 1", unmerged, 1),
            ("merged batch 1", merged, 1),
            ("unmerged batch 8", unmerged, 8),
            ("merged batch 8", merged, 8),
        ]
        tokens_per_second(merged, tokenizer, batch_size=8, new_tokens=4)  # warm-up
        for round_ in range(args.rounds):
            for name, model, batch in cases:
                rate = tokens_per_second(
                    model, tokenizer, batch_size=batch, new_tokens=args.new_tokens
                )
                runs.setdefault(name, []).append(rate)
                print(f"  round {round_ + 1} {name:<18} {rate:8.1f} tokens/s")

    rate = {name: statistics.median(values) for name, values in runs.items()}
    print()
    print(f"{'tokens/s (median)':<24}{'batch 1':>10}{'batch 8':>10}{'batch 8 / 1':>13}")
    for kind in ("unmerged", "merged"):
        one, eight = rate[f"{kind} batch 1"], rate[f"{kind} batch 8"]
        print(f"{kind:<24}{one:>10.1f}{eight:>10.1f}{eight / one:>13.2f}")
    for batch in (1, 8):
        ratio = rate[f"merged batch {batch}"] / rate[f"unmerged batch {batch}"]
        print(f"merged / unmerged at batch {batch}: {ratio:.2f}")
    print(f"speedup: {rate['merged batch 8'] / rate['merged batch 1']:.2f}")


if __name__ == "__main__":
    main()
