"""Examples -> token ids and labels: EOS appended, loss masked to the completion, truncation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptool.base import Example

if TYPE_CHECKING:
    from adaptool.base import Formatter
    from adaptool.recipe.schema import DataSection

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """One tokenized example. ``labels`` is ``IGNORE_INDEX`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    completion_tokens: int
    truncated: bool

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def ends_with_eos(self, eos_token_id: int | None) -> bool:
        """True when the last trained token is EOS (the model learns to stop)."""
        trained = [label for label in self.labels if label != IGNORE_INDEX]
        return eos_token_id is not None and bool(trained) and trained[-1] == eos_token_id


def encode_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    max_length: int,
    train_on_prompt: bool = False,
    prompt_has_special_tokens: bool = False,
) -> list[Encoded]:
    """Tokenize prompt and completion separately (so a generation prompt tokenizes exactly as
    in training), append EOS to the completion, mask the prompt, truncate to ``max_length``."""
    prompts = tokenizer(
        [e.prompt for e in examples], add_special_tokens=not prompt_has_special_tokens
    )["input_ids"]
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for prompt_ids, completion_ids in zip(prompts, completions, strict=True):
        completion_ids = list(completion_ids)
        if eos is not None and (not completion_ids or completion_ids[-1] != eos):
            completion_ids.append(eos)
        ids = list(prompt_ids) + completion_ids
        prompt_labels = list(prompt_ids) if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
        labels = prompt_labels + completion_ids
        labels[0] = IGNORE_INDEX  # nothing comes before the first token: it is never predicted
        out.append(
            Encoded(
                input_ids=ids[:max_length],
                labels=labels[:max_length],
                prompt_tokens=len(prompt_ids),
                completion_tokens=len(completion_ids),
                truncated=len(ids) > max_length,
            )
        )
    return out


def encode_rows(
    rows: Iterable[Mapping[str, Any]], formatter: Formatter, tokenizer: Any, data: DataSection
) -> list[Encoded]:
    """Format dataset rows with ``formatter`` and encode them as the recipe's [data] says."""
    return encode_examples(
        [formatter.format(row, tokenizer) for row in rows],
        tokenizer,
        max_length=data.max_length,
        train_on_prompt=data.train_on_prompt,
        prompt_has_special_tokens=formatter.prompt_has_special_tokens,
    )
