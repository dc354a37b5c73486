"""Training throughput against the machine's own limit. Three sides train the same base, data,
LoRA (r=16), steps and rows per step (4 x accumulation 4), alternated in fresh processes:

- reference: the notebook's way with plain transformers `Trainer` + peft (fp32 on a CPU,
  gradient checkpointing, `DataCollatorForLanguageModeling`, padded batches);
- tuned: the best a user gets from transformers alone: bf16 weights (where the CPU computes
  bf16 natively) under fp32 LoRA, length-grouped sampling, no gradient checkpointing, on the
  token sequences adaptool trains on;
- adaptool: `adaptool train` with its defaults.

It prints real (non-padding) tokens/s, peak memory (RSS; on a GPU, torch's peak allocation)
and final loss per side, then the model FLOPs per real token, this machine's matmul rates
(bf16 and fp32) measured in the same run at the model's own shapes, and the share of the
bf16 rate each side reaches.

Where a GPU is there every side trains on it, as adaptool does (`--cpu` keeps them all on the
CPU): the reference as the notebook on a GPU (fp32 weights under fp16 autocast, gradient
checkpointing), tuned in bf16 (weights and autocast), and peak memory is the GPU's (torch's
peak allocation) rather than the process's RSS; the matmul rates are the GPU's.

    python benchmarks/train_speed.py                 # 20M-param BLOOM (6 x 512), 60 steps
    python benchmarks/train_speed.py --size 100m     # a 100M-param BLOOM (12 x 768)
    python benchmarks/train_speed.py --quick         # 20 steps per run
    python benchmarks/train_speed.py --quantization bnb-8bit   # every side on an 8-bit base
    python benchmarks/train_speed.py --model llama   # Llamas of those sizes: adaptool also
                                                     # packed and length-grouped
    python benchmarks/train_speed.py --cpu           # on the CPU where a GPU is there too

All sides train on every token of the text (the notebook's loss). The reference tokenizes
it whole, as the notebook does; tuned and adaptool train on the very same token sequences
(prompt and completion tokenized apart, EOS appended: adaptool's formatter), so that their
final losses compare the training, not two tokenizations. The final loss is each trained
model's mean loss a token on the first 200 rows, measured alike (eval mode, each side's text
tokenized as it trained on it). The last
lines are `vs_tuned: <adaptool / tuned real tokens/s>`, `utilisation: <adaptool's model
FLOP/s / bf16 matmul rate>` and the headline `speedup: <adaptool / reference real tokens/s>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data" / "quotes-train.jsonl"
TOKENIZER = ROOT / "recipes" / "assets" / "tiny-bloom"
#: hidden size and layers of each --size
SIZES = {"20m": (512, 6), "100m": (768, 12)}

#: the trained model's mean loss a token on the first rows of the data, whole text as every
#: side trains on it, in eval mode: the same measure for every side, however each ordered its
#: batches (the last steps' training loss depends on which rows they drew). Each side's text
#: is tokenized as that side trained on it: the notebook's way whole, tuned's and adaptool's
#: prompt and completion apart (as adaptool trains and generates); the EOS left out
FINAL_LOSS = """
def peak_mb():
    import torch
    from adaptool.testing import peak_rss_mb
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()

def final_loss(model, tokenizer, data, apart=False, rows=200):
    import json, torch
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for line in open(data).readlines()[:rows]:
            r = json.loads(line)
            prompt, completion = r["quote"] + " ->: ", str(r["tags"])
            if apart:
                ids = tokenizer(prompt).input_ids
                ids += tokenizer(completion, add_special_tokens=False).input_ids
            else:
                ids = tokenizer(prompt + completion).input_ids
            ids = torch.tensor([ids], device=model.device)
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count
"""

REFERENCE = (
    FINAL_LOSS
    + """
import json, sys, time
import torch, transformers
from datasets import load_dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
base, data, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
quantization, tuned, seed = sys.argv[5], sys.argv[7] == "tuned", int(sys.argv[8])
transformers.utils.logging.set_verbosity_error()
torch.manual_seed(seed)
tokenizer = AutoTokenizer.from_pretrained(base)
from adaptool.modeling import resolve_precision
# tuned: bf16 weights where the CPU computes bf16 natively (LoRA stays fp32: peft upcasts it),
# no gradient checkpointing, length-grouped sampling; on a GPU bf16 weights under bf16
# autocast (fp16 autocast over fp32 on a GPU without bf16). The notebook on a GPU: fp32
# weights under fp16 autocast (its fp16=True)
gpu = torch.cuda.is_available()
# what this machine computes fastest (bf16, fp16 or fp32): tuned takes bf16 where it is that
tuned_bf16 = tuned and resolve_precision("auto") == "bf16"
dtype = torch.bfloat16 if tuned_bf16 else torch.float32
where = {"": 0} if gpu else None  # a quantized base loads where it trains (the notebook: auto)
if quantization == "bnb-8bit" and tuned:
    from transformers import BitsAndBytesConfig
    from adaptool.builtin.quantizers import disable_cpu_bf16_repack
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=dtype, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        device_map=where)
    model = disable_cpu_bf16_repack(model)
    for p in model.parameters():
        p.requires_grad = False
elif tuned:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    for p in model.parameters():
        p.requires_grad = False
elif quantization == "bnb-8bit":  # the notebook: load_in_8bit, then prepare for k-bit training
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig
    from adaptool.builtin.quantizers import disable_cpu_bf16_repack
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.float32, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        device_map=where)
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
if tuned:  # the very token sequences adaptool trains on (prompt and completion tokenized
    # apart, EOS appended), so that the final losses compare the training loops, not two
    # tokenizations of the text (apart is 3.7 % more tokens, and harder to model per character)
    def encode(r):
        ids = tokenizer(r["quote"] + " ->: ").input_ids
        ids += tokenizer(str(r["tags"]), add_special_tokens=False).input_ids
        ids.append(tokenizer.eos_token_id)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}
    rows = rows.map(encode, remove_columns=rows.column_names)
else:  # the notebook's: the whole text at once
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
    warmup_steps=5, max_steps=steps, learning_rate=2e-3, logging_steps=1,
    report_to="none", save_strategy="no", seed=seed, dataloader_num_workers=0,
    use_cpu=not gpu, bf16=gpu and tuned_bf16, fp16=gpu and not tuned_bf16,
    **({"train_sampling_strategy": "group_by_length"} if tuned else {}),
)
trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
started = time.monotonic()
trainer.train()
seconds = time.monotonic() - started
peak = peak_mb()
print(json.dumps({"seconds": seconds, "tokens": real["tokens"], "peak": peak,
                  "loss": final_loss(model, tokenizer, data, apart=tuned)}))
"""
)

ADAPTOOL = (
    FINAL_LOSS
    + """
import json, sys
from adaptool.plugins import load_plugins, use_plugins
from adaptool.recipe import validate_recipe
from adaptool.training.run import train
base, data, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
quantization, packing, extra = sys.argv[5], sys.argv[6], json.loads(sys.argv[7])
seed = int(sys.argv[8])
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
                 "save_steps": 0, "seed": seed,
                 "packing": {"auto": "auto", "true": True, "false": False}[packing]} | extra,
    "output": {"dir": out},
})
result = train(recipe)
records = [json.loads(l) for l in open(out + "/metrics.jsonl")]
# the training loop's own time (model loading and the final save are outside it, as they are
# outside the reference's trainer.train())
seconds, seen = 0.0, 0
for r in records:
    seconds += (r["tokens"] - seen) / r["tokens_per_s"]
    seen = r["tokens"]
peak = peak_mb()
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
import torch
from adaptool.modeling import PRECISION_DTYPES, device, resolve_precision
# the dtype adaptool trained in (precision auto), as the tuned side evaluates in its own
dtype = getattr(torch, PRECISION_DTYPES[resolve_precision("auto")])
model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device())
trained = PeftModel.from_pretrained(model, out)
loss = final_loss(trained, AutoTokenizer.from_pretrained(base), data, apart=True)
print(json.dumps({"seconds": seconds, "tokens": result.tokens, "peak": peak, "loss": loss}))
"""
)


def cpu_model() -> str:
    """The CPU's model name, for quoting with any figure measured on it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine() -> str:
    """The CPU, and the GPU the sides train on where there is one."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CPU: {cpu_model()})"
    return cpu_model()


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
    code: str,
    base: Path,
    steps: int,
    out: Path,
    quantization: str,
    packing: str = "auto",
    extra: str = "{}",
    seed: int = 0,
) -> dict[str, float]:
    """One side in a fresh process: its real tokens, loop seconds, peak memory and final loss.
    ``extra``: the reference's mode (notebook or tuned), or adaptool's extra training keys;
    ``seed``: the run's (LoRA's initialisation, the data's order, dropout)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            *(str(base), str(DATA), str(steps), str(out), quantization, packing, extra),
            str(seed),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_flops_per_token(base: Path, *, rank: int = 16, mean_length: float = 64.0) -> float:
    """The arithmetic one real token needs in LoRA training: the frozen base's matmuls forward
    and once more backward for the activations' gradients (2 + 2 FLOPs a weight, the head
    included; no weight gradients), the adapters' forward and both backward matmuls (6 a
    weight), and attention over ``mean_length`` positions (QK and AV, forward and backward)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(base))
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    inter = getattr(config, "intermediate_size", None) or 4 * h
    if config.model_type == "llama":
        kv = h // config.num_attention_heads * config.num_key_value_heads
        per_layer = h * (h + 2 * kv) + h * h + 3 * h * inter
        adapted = 2 * h * rank + rank * h + rank * kv  # q_proj, v_proj (peft's default)
    else:
        per_layer = 3 * h * h + h * h + 2 * h * inter
        adapted = h * rank + rank * 3 * h  # query_key_value (peft's default for BLOOM)
    linear = layers * per_layer + h * vocab
    attention = 2 * 2 * layers * h * mean_length
    return 4 * linear + 6 * layers * adapted + 2 * attention


def matmul_rates(base: Path, tokens: int = 1024) -> dict[str, float]:
    """This machine's matmul rate (FLOP/s) in bf16 and fp32 at the model's own shapes: a
    micro-batch of ``tokens`` through each of its linear layers, weighted by their work (on
    the GPU where the sides train on one), each shape's best of three timings."""
    import time

    import torch
    from transformers import AutoConfig

    gpu = torch.cuda.is_available()
    dev, sync = ("cuda", torch.cuda.synchronize) if gpu else ("cpu", lambda: None)

    config = AutoConfig.from_pretrained(str(base))
    h = config.hidden_size
    inter = getattr(config, "intermediate_size", None) or 4 * h
    shapes = [(h, 3 * h), (h, h), (h, inter), (inter, h), (h, config.vocab_size)]
    rates = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        flops = seconds = 0.0
        for k, n in shapes:
            a = torch.randn(tokens, k, dtype=dtype, device=dev)
            w = torch.randn(k, n, dtype=dtype, device=dev)
            for _ in range(3):
                a @ w
            reps, best = (100 if gpu else 10), float("inf")
            for _ in range(3):
                sync()
                started = time.perf_counter()
                for _ in range(reps):
                    a @ w
                sync()
                best = min(best, time.perf_counter() - started)
            seconds += best
            flops += 2 * tokens * k * n * reps
        rates[name] = flops / seconds
    del a, w
    if gpu:  # the sides' processes size their batches by the GPU memory free
        torch.cuda.empty_cache()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", choices=sorted(SIZES), default="20m")
    parser.add_argument(
        "--quantization",
        choices=["none", "bnb-8bit"],
        default="none",
        help="the base on every side: full precision, or bitsandbytes 8-bit as in the notebook",
    )
    parser.add_argument(
        "--model",
        choices=["bloom", "llama"],
        default="bloom",
        help="the base: a BLOOM (ALiBi: length-grouped batches), or a Llama of the same width "
        "and depth, where adaptool also runs packed and length-grouped",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="train every side on the CPU where a GPU is there too (sides follow adaptool, "
        "which trains on a GPU where it finds one)",
    )
    parser.add_argument(
        "--adaptool",
        default="{}",
        help="extra [training] keys for the adaptool side, as JSON: '{\"compile\": true}'",
    )
    args = parser.parse_args()
    if args.cpu:  # before torch looks: the sides' processes inherit it
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    steps = 20 if args.quick else 60
    sides = [
        ("reference", REFERENCE, "auto", "notebook"),
        ("tuned", REFERENCE, "auto", "tuned"),
        ("adaptool", ADAPTOOL, "auto", args.adaptool),
    ]
    if args.model == "llama":  # adaptool padded (length-grouped) and every batch packed too
        sides[2:2] = [
            ("grouped", ADAPTOOL, "false", args.adaptool),
            ("packed", ADAPTOOL, "true", args.adaptool),
        ]
    print(f"machine: {machine()}")
    import torch

    memory = "peak GPU memory" if torch.cuda.is_available() else "peak RSS"
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        hidden, layers = SIZES[args.size]
        base = build_base(work, hidden=hidden, layers=layers, kind=args.model)
        print(f"base quantization on every side: {args.quantization}")
        if args.model == "llama":
            print(
                "adaptool: its default (packing = auto: a batch of rows of mixed lengths "
                "packed); grouped: packing = false; packed: packing = true"
            )
        results: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in sides}
        # the matmul rates measured before the first round and after each, the best kept:
        # this VM's speed drifts over a run (once 0.29 TFLOP/s after the rounds, 0.40 alone)
        rates = matmul_rates(base)
        for round_ in range(args.rounds):
            for name, code, packing, extra in sides:
                out = work / f"{name}-{round_}"
                # each round its own seed, the same for every side: a final loss after 60
                # steps of a small model moves by a few % with the seed alone
                r = run(code, base, steps, out, args.quantization, packing, extra, round_)
                results[name].append(r)
                print(
                    f"  round {round_ + 1} {name:<10} {r['tokens'] / r['seconds']:8.0f} real "
                    f"tokens/s  {memory} {r['peak']:6.0f} MB  loss {r['loss']:.4f}"
                )
            rates = {k: max(v, rates[k]) for k, v in matmul_rates(base).items()}
        flops = model_flops_per_token(base)

    def med(name: str, key: str) -> float:
        if key == "rate":
            return statistics.median(r["tokens"] / r["seconds"] for r in results[name])
        return statistics.median(r[key] for r in results[name])

    print()
    others = [name for name, *_ in sides if name != "reference"]
    header = "".join(f"{name:>12}{'ratio':>8}" for name in others)
    print(f"{'':<22}{'reference':>12}{header}")
    for label, key in (
        ("real tokens/s", "rate"),
        (f"{memory} (MB)", "peak"),
        ("final loss", "loss"),
        ("real tokens", "tokens"),
    ):
        theirs = med("reference", key)
        cells = "".join(f"{med(n, key):>12.2f}{med(n, key) / theirs:>8.2f}" for n in others)
        print(f"{label:<22}{theirs:>12.2f}{cells}")
    print(
        f"\nmodel work: {flops / 1e6:.1f} MFLOP a real token; matmul rate at its shapes: "
        f"bf16 {rates['bf16'] / 1e12:.3f} TFLOP/s, fp32 {rates['fp32'] / 1e12:.3f} TFLOP/s"
    )
    for name, *_ in sides:
        achieved = flops * med(name, "rate")
        print(
            f"  {name:<10} {achieved / 1e12:.3f} TFLOP/s: {achieved / rates['bf16']:.1%} of "
            f"bf16, {achieved / rates['fp32']:.1%} of fp32"
        )
    if args.model == "llama":
        packed, grouped = med("packed", "rate"), med("grouped", "rate")
        print(f"packed vs length-grouped: {packed / grouped:.2f}x real tokens/s")
    adaptool = med("adaptool", "rate")
    tuned_peak, peak = med("tuned", "peak"), med("adaptool", "peak")
    loss_gap = med("adaptool", "loss") / med("tuned", "loss") - 1
    print(f"adaptool vs tuned: {memory} {peak / tuned_peak:.2f}x, final loss {loss_gap:+.1%}")
    print(f"vs_tuned: {adaptool / med('tuned', 'rate'):.2f}")
    print(f"utilisation: {flops * adaptool / rates['bf16']:.3f}")
    print(f"speedup: {adaptool / med('reference', 'rate'):.2f}")


if __name__ == "__main__":
    main()
