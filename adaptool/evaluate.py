"""``evaluate()``: generate on every row of a dataset and let the formatter score it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool.artifacts.layout import HELDOUT
from adaptool.artifacts.loading import open_target
from adaptool.artifacts.manifest import file_sha256
from adaptool.data import check_columns, load_file
from adaptool.errors import AdapterError, AdaptoolError, param
from adaptool.generate import Generation, build_prompts, generate

if TYPE_CHECKING:
    import datasets

    from adaptool.artifacts.artifact import Artifact
    from adaptool.base import Formatter


@dataclass
class EvalResult:
    target: str
    data: str
    metrics: dict[str, float]
    base_metrics: dict[str, float] | None = None
    generations: list[Generation] = field(default_factory=list)


def evaluate(
    target: Path,
    *,
    data: str | Path | None = None,
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    compare_base: bool = False,
    base: str | None = None,
    quantization: str | None = None,
) -> EvalResult:
    """Greedy generation on each row of ``data`` (a local file; default: the rows held out
    when the adapter was trained, as recorded then), scored by the adapter's formatter. With
    ``compare_base``, the base without the adapter is scored too."""
    opened = open_target(target, base=base, quantization=quantization)
    formatter = opened.formatter
    if opened.formatter_error is not None:
        raise opened.formatter_error
    if formatter is None:
        raise AdaptoolError(
            f"{opened.path} has no adaptool manifest, so its formatter (which scores outputs) "
            f"is unknown; evaluate an adapter trained by `adaptool train`."
        )
    if data is not None:
        path = Path(data).resolve()
        if not path.is_file():
            raise AdaptoolError(f"{param('data', 'FILE')}: the file {path} does not exist.")
        rows, source = load_file(path), str(data)
    else:
        rows = heldout_rows(opened.artifact)
        recorded = (opened.manifest.heldout or {}) if opened.manifest else {}
        source = f"{recorded.get('source')} (held out at training)"
    check_columns(rows, formatter, source)
    rows = [rows[i] for i in range(len(rows) if limit is None else min(limit, len(rows)))]

    def run() -> tuple[dict[str, float], list[Generation]]:
        return score_rows(
            opened.model,
            opened.tokenizer,
            formatter,
            rows,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )

    metrics, outputs = run()
    result = EvalResult(str(opened.path), source, metrics, generations=outputs)
    if compare_base and opened.kind == "adapter":
        with opened.model.disable_adapter():
            result.base_metrics, _ = run()
    return result


def score_rows(
    model: Any,
    tokenizer: Any,
    formatter: Formatter,
    rows: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> tuple[dict[str, float], list[Generation]]:
    """Greedy generation on each row's prompt (the formatter's), scored by the formatter."""
    prompts = build_prompts(rows, formatter, tokenizer, raw=False)
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        add_special_tokens=not formatter.prompt_has_special_tokens,
        formatter=formatter,
    )
    return formatter.score(rows, outputs, tokenizer), outputs


def heldout_rows(artifact: Artifact) -> datasets.Dataset:
    """The rows held out when ``artifact`` was trained, from the copy train wrote beside it
    (never the data source as it is now, which may have changed since)."""
    manifest = artifact.manifest
    recorded = manifest.heldout if manifest is not None else None
    if recorded is None:
        eval_rows = ((manifest.data if manifest else None) or {}).get("eval_rows")
        why = (
            "held out no rows (data.eval_fraction = 0)"
            if eval_rows == 0
            else "records no held-out rows (it was not trained by this version of adaptool)"
        )
        raise AdaptoolError(f"{artifact.path} {why}: pass {param('data', 'FILE')}.")
    path = artifact.path / recorded.get("file", HELDOUT)
    if not path.is_file():
        raise AdaptoolError(
            f"{artifact.path} does not hold the rows held out at training ({HELDOUT} stays on "
            f"the machine that trained it; push does not share data): pass "
            f"{param('data', 'FILE')}."
        )
    if file_sha256(path) != recorded.get("sha256"):
        raise AdapterError(
            f"{path}, the rows held out at training, has changed since; pass "
            f"{param('data', 'FILE')} to evaluate on other rows."
        )
    return load_file(path)
