"""Build the tokenizer of the offline default base, ``recipes/assets/tiny-bloom``.

A byte-level BPE (BLOOM's kind, BLOOM's special tokens) trained on the training quotes and
their tags only — the held-out quotes never shape it. Deterministic: the same data gives the
same files.

    python scripts/make_tiny_base.py            # writes recipes/assets/tiny-bloom/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptool.testing import make_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "recipes" / "data" / "quotes-train.jsonl"


def corpus(path: Path) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts.append(f"{row['quote']} ->: {row['tags']!s}")
        texts.append(str(row["tags"]))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "recipes" / "assets" / "tiny-bloom")
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(args.out, corpus(TRAIN), vocab_size=args.vocab_size)
    print(f"tokenizer: {len(tokenizer)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
