"""Training throughput: the reference flow (plain transformers `Trainer` + peft, the notebook's
settings: `DataCollatorForLanguageModeling`, gradient checkpointing, batch 4 x accumulation 4)
against `adaptool train` on the same base, data, LoRA, steps and rows per step, alternated
A/B/A/B in fresh processes. Prints real (non-padding) tokens/s, peak RSS and final loss.

    python benchmarks/train_speed.py            # 20M-param BLOOM, 60 steps per run
    python benchmarks/train_speed.py --quick    # 20 steps per run, under 3 minutes
    python benchmarks/train_speed.py --quantization bnb-8bit   # both sides on an 8-bit base
    python benchmarks/train_speed.py --model llama   # a Llama of the same size: adaptool
                                                     # grouped, packed and by default (auto)

adaptool runs with its defaults (precision and gradient checkpointing "auto": bf16 weights
where the CPU computes bf16 natively, no checkpointing when memory allows); the reference
runs the notebook's way (fp32 on a CPU, gradient checkpointing, padded batches).

Both sides train on the whole text (the notebook's loss), so final losses compare. The last
line is the headline: `speedup: <adaptool real tokens/s / reference real tokens/s>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data" / "quotes-train.jsonl"
TOKENIZER = ROOT / "recipes" / "assets" / "tiny-bloom"

REFERENCE = """
import json, sys, time
import torch, transformers
from datasets import load_dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from adaptool.testing import peak_rss_mb
base, data, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
quantization = sys.argv[5]
transformers.utils.logging.set_verbosity_error()
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(base)
if quantization == "bnb-8bit":  # the notebook: load_in_8bit, then prepare for k-bit training
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig
    from adaptool.builtin.quantizers import disable_cpu_bf16_repack
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.float32, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    model = disable_cpu_bf16_repack(model)  # bitsandbytes' CPU repack bug, fixed as adaptool does
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
else:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none",
                                         task_type="CAUSAL_LM"))
rows = load_dataset("json", data_files=data, split="train")
rows = rows.map(lambda r: {"prediction": r["quote"] + " ->: " + str(r["tags"])})
rows = rows.map(lambda b: tokenizer(b["prediction"]), batched=True,
                remove_columns=rows.column_names)
real = {"tokens": 0}
collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False)
def collate(features):
    batch = collator(features)
    real["tokens"] += int(batch["attention_mask"].sum())
    return batch
args = transformers.TrainingArguments(
    output_dir=out, per_device_train_batch_size=4, gradient_accumulation_steps=4,
    warmup_steps=5, max_steps=steps, learning_rate=2e-3, logging_steps=1, use_cpu=True,
    report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0,
)
trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
started = time.monotonic()
trainer.train()
seconds = time.monotonic() - started
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"seconds": seconds, "tokens": real["tokens"], "peak": peak_rss_mb(),
                  "loss": sum(losses[-5:]) / len(losses[-5:])}))
"""

ADAPTOOL = """
import json, sys
from adaptool.plugins import load_plugins, use_plugins
from adaptool.recipe import validate_recipe
from adaptool.testing import peak_rss_mb
from adaptool.training.run import train
base, data, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
quantization, packing = sys.argv[5], sys.argv[6]
use_plugins(load_plugins(entry_points=False))
# adaptool's defaults: dtype and precision "auto" (bf16 where the CPU computes it natively),
# gradient checkpointing "auto", length-grouped batches
recipe = validate_recipe({
    "model": {"name": base},
    "quantization": {"backend": quantization},
    "peft": {"r": 16, "alpha": 32, "dropout": 0.05, "bias": "none"},
    "data": {"source": data, "formatter": "quote-tags", "train_on_prompt": True},
    "training": {"batch_size": 4, "gradient_accumulation_steps": 4, "warmup_steps": 5,
                 "max_steps": steps, "learning_rate": 2e-3, "logging_steps": 1,
                 "save_steps": 0, "seed": 0,
                 "packing": {"auto": "auto", "true": True, "false": False}[packing]},
    "output": {"dir": out},
})
result = train(recipe)
records = [json.loads(l) for l in open(out + "/metrics.jsonl")]
losses = [r["loss"] for r in records if "loss" in r]
# the training loop's own time (model loading and the final save are outside it, as they are
# outside the reference's trainer.train())
seconds, seen = 0.0, 0
for r in records:
    seconds += (r["tokens"] - seen) / r["tokens_per_s"]
    seen = r["tokens"]
print(json.dumps({"seconds": seconds, "tokens": result.tokens, "peak": peak_rss_mb(),
                  "loss": sum(losses[-5:]) / len(losses[-5:])}))
"""


def cpu_model() -> str:
    """The CPU's model name, for quoting with any figure measured on it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def build_base(work: Path, *, hidden: int, layers: int, kind: str = "bloom") -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        BloomConfig,
        BloomForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    torch.manual_seed(0)
    special = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if kind == "llama":  # rotary positions, grouped-query attention, SwiGLU: packing is exact
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=hidden // 64,
                num_key_value_heads=max(1, hidden // 256),
                intermediate_size=hidden * 8 // 3 // 64 * 64,
                tie_word_embeddings=False,
                **special,
            )
        )
    else:
        model = BloomForCausalLM(
            BloomConfig(hidden_size=hidden, n_layer=layers, n_head=hidden // 64, **special)
        )
    base = work / "base"
    model.save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    print(
        f"base: {type(model).__name__.removesuffix('ForCausalLM')} {layers} x {hidden}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params; data: {DATA.name}"
    )
    return base


def run(
    code: str, base: Path, steps: int, out: Path, quantization: str, packing: str = "auto"
) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            *(str(base), str(DATA), str(steps), str(out), quantization, packing),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--quantization",
        choices=["none", "bnb-8bit"],
        default="none",
        help="the base on both sides: full precision, or bitsandbytes 8-bit as in the notebook",
    )
    parser.add_argument(
        "--model",
        choices=["bloom", "llama"],
        default="bloom",
        help="the base: a 20M-param BLOOM (ALiBi: length-grouped batches), or a Llama of the "
        "same width and depth, where adaptool also runs packed (the default there) against "
        "length-grouped",
    )
    args = parser.parse_args()
    steps = 20 if args.quick else 60
    sides = [("reference", REFERENCE, "auto"), ("adaptool", ADAPTOOL, "auto")]
    if args.model == "llama":  # adaptool padded (length-grouped) and every batch packed too
        sides[1:1] = [("grouped", ADAPTOOL, "false"), ("packed", ADAPTOOL, "true")]
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        base = build_base(work, hidden=512, layers=6, kind=args.model)
        print(f"base quantization on both sides: {args.quantization}")
        if args.model == "llama":
            print(
                "adaptool: its default (packing = auto: a batch of rows of mixed lengths "
                "packed); grouped: packing = false; packed: packing = true"
            )
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in sides}
        for round_ in range(args.rounds):
            for name, code, packing in sides:
                out = work / f"{name}-{round_}"
                r = run(code, base, steps, out, args.quantization, packing)
                results[name].append(r)
                print(
                    f"  round {round_ + 1} {name:<10} {r['tokens'] / r['seconds']:8.0f} real "
                    f"tokens/s  peak RSS {r['peak']:6.0f} MB  loss {r['loss']:.4f}"
                )

    def med(name: str, key: str) -> float:
        if key == "rate":
            return statistics.median(r["tokens"] / r["seconds"] for r in results[name])
        return statistics.median(r[key] for r in results[name])

    print()
    others = [name for name, _, _ in sides if name != "reference"]
    header = "".join(f"{name:>12}{'ratio':>8}" for name in others)
    print(f"{'':<22}{'reference (Trainer)':>20}{header}")
    for label, key in (
        ("real tokens/s", "rate"),
        ("peak RSS (MB)", "peak"),
        ("final loss", "loss"),
        ("real tokens", "tokens"),
    ):
        theirs = med("reference", key)
        cells = "".join(f"{med(n, key):>12.2f}{med(n, key) / theirs:>8.2f}" for n in others)
        print(f"{label:<22}{theirs:>20.2f}{cells}")
    if args.model == "llama":
        packed, grouped = med("packed", "rate"), med("grouped", "rate")
        print(f"packed vs length-grouped: {packed / grouped:.2f}x real tokens/s")
    print(f"speedup: {med('adaptool', 'rate') / med('reference', 'rate'):.2f}")


if __name__ == "__main__":
    main()
