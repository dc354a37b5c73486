"""``generate()``: prompts in, completions out — batched with left padding and the KV cache."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from adaptool.errors import AdaptoolError


@dataclass
class Generation:
    """One completion: the text up to (not including) EOS, its tokens, whether it stopped."""

    prompt: str
    output: str
    tokens: int
    stopped: bool
    seconds: float
    parsed: Any = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_prompts(
    inputs: Sequence[str | Mapping[str, Any]], formatter: Any, tokenizer: Any, *, raw: bool
) -> list[str]:
    """Raw inputs -> prompts through the formatter (``raw`` passes strings through)."""
    if raw or formatter is None:
        return [str(i) for i in inputs]
    return [formatter.generation_prompt(i, tokenizer) for i in inputs]


def left_padded(sequences: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any]:
    """Token id lists as one left-padded batch: (input_ids, attention_mask), as generation
    wants them (every row's last token in the last column)."""
    import torch

    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    add_special_tokens: bool = True,
    formatter: Any = None,
    streamer: Any = None,
    seed: int | None = None,
) -> list[Generation]:
    """Generate for every prompt, ``batch_size`` at a time (left-padded). Greedy unless
    ``temperature > 0``. With a ``formatter``, outputs are also parsed."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    dev = next(model.parameters()).device
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise AdaptoolError(
            f"prompt {empty[0] + 1} encodes to no tokens at all, so there is nothing to continue "
            f"from; give some text."
        )
    results: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = encoded[start : start + batch_size]
        ids, mask = left_padded(chunk, pad)
        width = ids.shape[1]
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        began = time.monotonic()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                streamer=streamer if len(chunk) == 1 else None,
                **sampling,
            )
        seconds = (time.monotonic() - began) / len(chunk)
        for row in range(len(chunk)):
            new = out[row, width:].tolist()
            stopped = eos is not None and eos in new
            if stopped:
                new = new[: new.index(eos) + 1]
            text = tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True)
            prompt = prompts[start + row]
            parsed = formatter.parse(text) if formatter is not None else None
            results.append(Generation(prompt, text, len(new), stopped, round(seconds, 4), parsed))
    return results
