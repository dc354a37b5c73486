"""Build the offline default base, ``recipes/assets/tiny-bloom``: a small BLOOM-architecture
language model pretrained for a few minutes on the CPU.

- Tokenizer: byte-level BPE (BLOOM's kind and special tokens), trained on the project's prose
  (``recipes/data/pretrain.txt``) and the *training* quotes with their tag lists, so that the
  tagging format tokenizes compactly. The held-out quotes never shape anything.
- Model: BLOOM (alibi attention, tied embeddings), pretrained as a plain causal LM on the prose
  and the training quotes' text — without their tags: the base knows English quotations but has
  never seen a quote tagged, which is what the adapter has to teach.

Deterministic for a given seed and library versions.

    python scripts/make_tiny_base.py              # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "data"


def quotes(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def prose(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "recipes" / "assets" / "tiny-bloom")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--prose", type=Path, default=DATA / "pretrain.txt")
    args = parser.parse_args()

    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from adaptool.testing import make_tokenizer

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_quotes = quotes(DATA / "quotes-train.jsonl")
    paragraphs = prose(args.prose)
    texts = paragraphs + [q["quote"] for q in train_quotes]

    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer_corpus = texts + [f"{q['quote']} ->: {q['tags']!s}" for q in train_quotes]
    tokenizer = make_tokenizer(None, tokenizer_corpus, vocab_size=args.vocab_size)
    print(f"tokenizer: {len(tokenizer)} tokens")

    # one long stream of documents separated by EOS, cut into fixed windows
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    windows = [
        stream[i : i + args.seq_len]
        for i in range(0, len(stream) - args.seq_len, args.seq_len // 2)
    ]
    print(
        f"pretraining data: {len(texts)} documents, {len(stream):,} tokens, "
        f"{len(windows)} windows of {args.seq_len}"
    )

    config = BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        n_layer=args.layers,
        n_head=args.heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout=args.dropout,
        attention_dropout=args.dropout,
    )
    model = BloomForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: BLOOM {args.layers} layers x {args.hidden_size}, {params / 1e6:.2f} M params")

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95)
    )
    warmup = max(1, args.steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.monotonic()
    model.train()
    for step in range(args.steps):
        picks = torch.randint(len(windows), (args.batch_size,), generator=generator).tolist()
        batch = torch.tensor([windows[i] for i in picks])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step + 1}/{args.steps} loss {loss.item():.3f} "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )

    model.eval()
    sample = tokenizer("“Books are", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **sample, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    print("sample:", tokenizer.decode(out[0], skip_special_tokens=True))
    model.config.hidden_dropout = model.config.attention_dropout = 0.0  # pretraining only
    model.half()
    model.save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    print(f"saved to {args.out} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
