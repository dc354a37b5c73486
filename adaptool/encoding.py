"""Examples -> token ids and labels: EOS appended, loss masked to the completion, truncation."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptool.base import Example
from adaptool.errors import AdaptoolError, DataError, PluginError, describe

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
    in training), append EOS to the completion, mask the prompt, truncate to ``max_length``.
    An example with ``spans`` (a conversation) is tokenized whole and trained where its spans
    say (:func:`encode_spans`)."""
    if any(e.spans for e in examples):
        return [
            encode_spans(
                e,
                tokenizer,
                max_length=max_length,
                train_on_prompt=train_on_prompt,
                add_special_tokens=not prompt_has_special_tokens,
            )
            if e.spans
            else encode_examples(
                [e],
                tokenizer,
                max_length=max_length,
                train_on_prompt=train_on_prompt,
                prompt_has_special_tokens=prompt_has_special_tokens,
            )[0]
            for e in examples
        ]
    prompts = token_ids(
        tokenizer, [e.prompt for e in examples], add_special_tokens=not prompt_has_special_tokens
    )
    completions = token_ids(tokenizer, [e.completion for e in examples], add_special_tokens=False)
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


#: texts checked both ways on every batch the Rust encoder tokenizes
CHECKED = 2


def token_ids(tokenizer: Any, texts: list[str], *, add_special_tokens: bool) -> list[list[int]]:
    """The token ids of ``texts``, as ``tokenizer(texts)`` gives them — through the Rust
    tokenizer's own batch encoder where there is one, which skips transformers' per-text
    Python work (twice as fast on short rows). The first and last texts of every batch are
    also tokenized the ordinary way; any difference (a tokenizer that rewrites its input in
    Python first) and the whole batch goes the ordinary way."""
    if not texts:  # a batch whose every row was refused
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if getattr(backend, "truncation", None) or getattr(backend, "padding", None):
        backend = None  # a stored truncation or padding the call would undo: the call it is
    encode = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
    if encode is not None:
        try:
            ids = [e.ids for e in encode(texts, add_special_tokens=add_special_tokens)]
        except (TypeError, ValueError, RuntimeError):
            ids = None
        probe = [
            *range(min(CHECKED, len(texts))),
            *range(max(CHECKED, len(texts) - CHECKED), len(texts)),
        ]
        if ids is not None:
            sample = tokenizer([texts[i] for i in probe], add_special_tokens=add_special_tokens)
            if [list(x) for x in sample["input_ids"]] == [ids[i] for i in probe]:
                return ids
    return [list(x) for x in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]


def encode_spans(
    example: Example,
    tokenizer: Any,
    *,
    max_length: int,
    train_on_prompt: bool = False,
    add_special_tokens: bool = False,
) -> Encoded:
    """A conversation tokenized whole, as the template rendered it; a token is trained when
    its characters lie inside one of ``example.spans`` (every assistant turn). EOS is appended
    (trained) unless the last turn already holds it, so the model learns to stop."""
    text = example.prompt + example.completion
    spans = example.spans
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(
            text, add_special_tokens=add_special_tokens, return_offsets_mapping=True
        )
        ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    else:  # no character offsets: the pieces between span edges, tokenized one by one
        ids, offsets = _pieces(text, spans, tokenizer, add_special_tokens)

    def trained(start: int, end: int) -> bool:
        return end > start and any(a <= start and end <= b for a, b in spans)

    labels = [
        t if train_on_prompt or trained(*o) else IGNORE_INDEX
        for t, o in zip(ids, offsets, strict=True)
    ]
    eos, eos_text = tokenizer.eos_token_id, getattr(tokenizer, "eos_token", None) or ""
    last = text[spans[-1][0] : spans[-1][1]]
    if eos is not None and not (ids and ids[-1] == eos) and not (eos_text and eos_text in last):
        ids.append(eos)
        labels.append(eos)
    labels[0] = IGNORE_INDEX  # nothing comes before the first token: it is never predicted
    cut = len(example.prompt)
    prompt_tokens = sum(1 for start, end in offsets if end <= cut)
    return Encoded(
        input_ids=ids[:max_length],
        labels=labels[:max_length],
        prompt_tokens=prompt_tokens,
        completion_tokens=len(ids) - prompt_tokens,
        truncated=len(ids) > max_length,
    )


def _pieces(
    text: str, spans: Sequence[tuple[int, int]], tokenizer: Any, add_special_tokens: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids with the character range of the piece each came from, for a tokenizer that
    gives no offsets: the text cut at every span edge, each piece tokenized on its own."""
    edges = sorted({0, len(text), *(e for span in spans for e in span)})
    ids, offsets = [], []
    for start, end in itertools.pairwise(edges):
        first = start == 0 and add_special_tokens
        piece = tokenizer(text[start:end], add_special_tokens=first)["input_ids"]
        ids += piece
        offsets += [(start, end)] * len(piece)
    return ids, offsets


#: what a formatter raises for a row it cannot render (a null or wrongly typed field)
ROW_ERRORS = (DataError, TypeError, ValueError, KeyError, AttributeError)


@dataclass(frozen=True)
class BadRow:
    """A row the formatter refused (a null or wrongly typed field): where, and why."""

    row: int  # 1-based, in the source
    message: str
    #: the formatter raised something other than a DataError (named in the error)
    by_plugin: bool = False
    #: not bad data but the formatter's bug (an unexpected exception): never skipped
    bug: bool = False


def _plugin(formatter: Formatter) -> str:
    """``formatter 'name' (distribution version)``: who to tell about a failure."""
    from adaptool.plugins import registry

    try:
        provider = registry().entry("formatter", formatter.name).provider
    except PluginError:
        return f"formatter '{formatter.name}'"
    return f"formatter '{formatter.name}' ({provider.distribution} {provider.version})"


def row_error(bad: BadRow, formatter: Formatter, data: DataSection) -> AdaptoolError:
    """The error for a refused row that is not skipped: bad data (DataError), or the
    formatter's bug (PluginError) — one paragraph naming the row, the source and the plugin."""
    if bad.bug:
        return PluginError(
            f"{_plugin(formatter)} failed on row {bad.row} of {data.source}: "
            f"{bad.message.rstrip('.')}. This is a bug in the formatter, not in the row; "
            f"report it to its authors (`adaptool plugins` lists what is installed)."
        )
    who = f"{_plugin(formatter)} raised " if bad.by_plugin else ""
    message = bad.message if bad.message.endswith(".") else bad.message + "."
    return DataError(
        f"row {bad.row} of {data.source}: {who}{message} Fix the row, or set "
        f'data.on_bad_row = "skip" to leave such rows out (they are counted).'
    )


def raise_unless_skipped(bad: Iterable[BadRow], formatter: Formatter, data: DataSection) -> None:
    """Raise :func:`row_error` for the first refused row that is not skipped: a formatter's
    bug always, bad data unless ``data.on_bad_row = "skip"``."""
    for refused in bad:
        if refused.bug or data.on_bad_row == "error":
            raise row_error(refused, formatter, data)


def format_rows(
    rows: Iterable[Mapping[str, Any]],
    formatter: Formatter,
    tokenizer: Any,
    *,
    positions: Sequence[int] | None = None,
) -> tuple[list[Example], list[BadRow]]:
    """Each row through ``formatter.format``: the examples, and the rows it refused (bad data
    or its own bug), each with its 1-based place in the source (``positions``: 0-based)."""
    examples, bad = [], []
    for i, row in enumerate(rows):
        number = (positions[i] if positions is not None else i) + 1
        try:
            example = formatter.format(row, tokenizer)
            if not (isinstance(example.prompt, str) and isinstance(example.completion, str)):
                raise DataError(f"formatter '{formatter.name}' made a non-text example")
        except ROW_ERRORS as exc:
            data_error = isinstance(exc, DataError)
            bad.append(BadRow(number, str(exc) if data_error else describe(exc), not data_error))
            continue
        except (AdaptoolError, OSError, MemoryError):
            raise  # adaptool's own clean errors (a tokenizer without a chat template), the system
        except Exception as exc:  # anything else is the plugin's bug, never a bare traceback
            bad.append(BadRow(number, describe(exc), by_plugin=True, bug=True))
            continue
        examples.append(example)
    return examples, bad


def encode_rows(
    rows: Iterable[Mapping[str, Any]],
    formatter: Formatter,
    tokenizer: Any,
    data: DataSection,
    *,
    positions: Sequence[int] | None = None,
    collect: bool = False,
) -> tuple[list[Encoded], list[BadRow]]:
    """Format dataset rows with ``formatter`` and encode them as the recipe's [data] says.
    A row the formatter refuses is a DataError naming its row (``positions``: each row's
    place in the source) and the source — or, with ``data.on_bad_row = "skip"``, skipped and
    returned among the bad rows. ``collect``: every refused row is returned, none raised (the
    caller decides, as a batched map that must not stop mid-way does)."""
    examples, bad = format_rows(rows, formatter, tokenizer, positions=positions)
    if not collect:
        raise_unless_skipped(bad, formatter, data)
    encoded = encode_examples(
        examples,
        tokenizer,
        max_length=MAX_TOKENS if formatter.chunks else data.max_length,
        train_on_prompt=data.train_on_prompt,
        prompt_has_special_tokens=formatter.prompt_has_special_tokens,
    )
    if formatter.chunks:
        encoded = chunk_blocks(encoded, data.max_length)
    return encoded, bad


#: no document is longer than this many tokens (a bound, not a setting)
MAX_TOKENS = 1 << 40


def chunk_blocks(encoded: Sequence[Encoded], block: int) -> list[Encoded]:
    """Documents (each ending with EOS) as one token stream, cut into blocks of ``block``
    tokens; every token of a block is trained but its first (nothing in the block precedes
    it). Every token of every document is in exactly one block; the last block may be short."""
    stream = [token for e in encoded for token in e.input_ids]
    blocks = []
    for start in range(0, len(stream), block):
        ids = stream[start : start + block]
        blocks.append(
            Encoded(
                input_ids=ids,
                labels=[IGNORE_INDEX, *ids[1:]],
                prompt_tokens=0,
                completion_tokens=len(ids),
                truncated=False,
            )
        )
    return blocks
