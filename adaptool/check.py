"""``adaptool check``: a recipe's data as the trainer will see it, before any training."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from adaptool.base import RunInfo
from adaptool.encoding import IGNORE_INDEX, Encoded, encode_rows
from adaptool.errors import PluginError
from adaptool.modeling import load_tokenizer
from adaptool.recipe.resolve import RecipePlugins, resolve_plugins
from adaptool.sharding import refusals
from adaptool.training.sources import Data, load_source, load_stream

if TYPE_CHECKING:
    from adaptool.recipe.schema import Recipe


@dataclass
class ExampleView:
    """One example with its text split into runs that are (or are not) trained on."""

    row: int
    segments: list[tuple[str, bool]]
    prompt_tokens: int
    completion_tokens: int
    trained_tokens: int
    truncated: bool


@dataclass
class CheckReport:
    recipe: Recipe
    formatter: str
    formatter_version: str
    #: the PEFT method: plugin name, display name, the hyperparameters that matter
    method: str
    method_title: str
    hyperparameters: dict[str, Any]
    #: parameters the adapter trains on this base (None when its config could not be read)
    trainable_params: int | None
    tokenizer: str
    rows: int
    train_rows: int
    eval_rows: int
    examples: list[ExampleView]
    token_counts: list[int]
    over_max_length: int
    without_eos: int
    fully_masked: int
    warnings: list[str] = field(default_factory=list)
    #: with several sources: rows, tokens and trained tokens of each, and its weight
    sources: list[dict[str, Any]] = field(default_factory=list)
    #: across processes: how many, the strategy, the effective batch, what each holds
    world: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        counts = self.token_counts or [0]
        return {
            "recipe": str(self.recipe.path),
            "formatter": self.formatter,
            "formatter_version": self.formatter_version,
            "method": self.method,
            "method_title": self.method_title,
            "hyperparameters": self.hyperparameters,
            "trainable_params": self.trainable_params,
            "tokenizer": self.tokenizer,
            "rows": self.rows,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "tokens": {
                "min": min(counts),
                "mean": round(statistics.fmean(counts), 1),
                "max": max(counts),
                "total": sum(counts),
            },
            "max_length": self.recipe.data.max_length,
            "over_max_length": self.over_max_length,
            "without_eos": self.without_eos,
            "fully_masked": self.fully_masked,
            "examples": [
                {
                    "row": e.row,
                    "text": "".join(t for t, _ in e.segments),
                    "trained": "".join(t for t, trained in e.segments if trained),
                    "prompt_tokens": e.prompt_tokens,
                    "completion_tokens": e.completion_tokens,
                    "trained_tokens": e.trained_tokens,
                    "truncated": e.truncated,
                }
                for e in self.examples
            ],
            "warnings": self.warnings,
            "sources": self.sources,
            "world": self.world,
        }


def check(recipe: Recipe, *, examples: int = 3, processes: int = 1) -> CheckReport:
    """Resolve the recipe's plugins, load its tokenizer and dataset, format and tokenize every
    row, and report what training would see. Raises AdaptoolError subclasses on bad input."""
    plugins = resolve_plugins(recipe)
    formatter, method = plugins.formatter, plugins.method
    model = recipe.model
    tokenizer = load_tokenizer(
        model.name, revision=model.revision, trust_remote_code=model.trust_remote_code
    )
    seed = recipe.training.seed
    source = recipe.data.all_sources[0]
    if source.streaming:  # the first window only: a stream's size is not known until read
        data = load_stream(recipe, formatter, tokenizer, None)
    else:
        data = load_source(source, formatter, tokenizer, seed, None, require_trained=False)
    rows, sets = data.rows, (data.train_set, data.eval_set)
    hyperparameters, trainable = _method_report(recipe, plugins)
    first = [rows[i] for i in range(min(examples, len(rows)))]
    shown, _ = encode_rows(first, formatter, tokenizer, source, collect=True)
    eos = tokenizer.eos_token_id
    bad = data.bad_rows
    report = CheckReport(
        recipe=recipe,
        formatter=formatter.name,
        formatter_version=formatter.version,
        method=method.name,
        method_title=method.title(),
        hyperparameters=hyperparameters,
        trainable_params=trainable,
        tokenizer=str(getattr(tokenizer, "name_or_path", "")),
        rows=len(data.train_set) if data.stream is not None else len(rows),
        train_rows=data.split_rows[0],
        eval_rows=data.split_rows[1],
        examples=[_view(i, e, tokenizer) for i, e in enumerate(shown[:examples])],
        token_counts=[int(n) for s in sets for n in s.lengths],
        over_max_length=sum(int(s.truncated.sum()) for s in sets),
        without_eos=sum(int((~s.ends_with_eos).sum()) for s in sets),
        fully_masked=data.dropped,
    )
    if data.stream is not None:
        report.warnings.append(
            f"data.streaming: the counts below are of the first {len(data.train_set)} "
            f"examples the stream gives (its first window); a streamed source is not counted "
            f"before training."
        )
    if not method.mergeable:
        report.warnings.append(
            f"a {method.title()} adapter cannot be merged into the base "
            f"({method.not_mergeable_because})."
        )
    if bad:
        report.warnings.append(
            f"{len(bad)} of {report.rows} rows are refused by the formatter and skipped "
            f'(data.on_bad_row = "skip"); the first, row {bad[0].row}: {bad[0].message}'
        )
    if formatter.chunks:
        report.warnings.append(
            f"formatter '{formatter.name}' chunks: {report.rows} documents make "
            f"{sum(len(s) for s in sets)} blocks of up to {recipe.data.max_length} tokens "
            f"({sum(report.token_counts):,} tokens, EOS between documents, none truncated)."
        )
    if report.over_max_length:
        report.warnings.append(
            f"{report.over_max_length} of {report.rows} examples exceed max_length = "
            f"{recipe.data.max_length} tokens and are truncated."
        )
    if eos is None:
        report.warnings.append(
            "the tokenizer has no EOS token: completions cannot end with one, so the model "
            "will not learn to stop (generation runs on to max_new_tokens)."
        )
    elif report.without_eos and not formatter.chunks:  # a block ends wherever it ends
        report.warnings.append(
            f"{report.without_eos} of {report.rows} examples do not end with a trained EOS "
            f"(cut by max_length): those teach the model not to stop."
        )
    if report.fully_masked:
        report.warnings.append(
            f"{report.fully_masked} of {report.rows} examples have every label masked (empty "
            f"completion, or the prompt alone fills max_length): they add nothing to training."
        )
    if len(recipe.data.all_sources) > 1:
        report.sources = _mixture(recipe, plugins, tokenizer, data)
    report.world = world_report(recipe, processes, trainable)
    if processes > 1 and recipe.distributed.strategy == "fsdp":
        refused = refusals(plugins)
        try:
            plugins.quantizer.for_sharding()
        except PluginError as exc:
            refused.append(str(exc))
        report.warnings += [f'train refuses distributed.strategy = "fsdp": {r}' for r in refused]
    if processes > 1 and recipe.distributed.strategy == "deepspeed":
        report.warnings.append(
            'distributed.strategy = "deepspeed": train refuses it (not in this version); use '
            '"fsdp" or "ddp".'
        )
    return report


#: bytes per trainable parameter a process holds: fp32 weight, gradient, AdamW's two moments
TRAINING_BYTES = 16


def world_report(recipe: Recipe, processes: int, trainable: int | None) -> dict[str, Any]:
    """How ``processes`` training processes would share the recipe's work."""
    t, strategy = recipe.training, recipe.distributed.strategy
    adapter = f"{trainable:,} trainable params" if trainable else "the adapter"
    state = f" ({trainable * TRAINING_BYTES / 2**20:.1f} MiB)" if trainable else ""
    holds = {
        "ddp": f"the whole base, {adapter}, their gradients and optimizer state{state}",
        "fsdp": f"1/{processes} of the base, of {adapter} and of its optimizer state",
        "deepspeed": f"ZeRO stage {recipe.distributed.zero_stage}: its share of the state",
    }[strategy]
    return {
        "processes": processes,
        "strategy": strategy if processes > 1 else None,
        "effective_batch": t.batch_size * t.gradient_accumulation_steps * processes,
        "rows_per_micro_batch": t.batch_size,
        "micro_batches_per_step": t.gradient_accumulation_steps,
        # the step's rows merged into fewer micro-batches (none under FSDP)
        "micro_batch_tokens": 0 if strategy == "fsdp" and processes > 1 else t.micro_batch_tokens,
        "each_holds": holds if processes > 1 else f"the whole base, {adapter}",
    }


def _mixture(
    recipe: Recipe, plugins: RecipePlugins, tokenizer: Any, first: Data
) -> list[dict[str, Any]]:
    """Each source of a mixture as training will take it: rows, tokens, trained tokens
    (``first``: the first source, already loaded)."""
    out = []
    pairs = zip(recipe.data.all_sources, plugins.source_formatters, strict=True)
    for i, (source, formatter) in enumerate(pairs):
        data = first
        if i:
            seed = recipe.training.seed
            data = load_source(source, formatter, tokenizer, seed, None, require_trained=False)
        sets = (data.train_set, data.eval_set)
        out.append(
            {
                "source": source.source,
                "formatter": formatter.name,
                "weight": source.weight,
                "rows": len(data.rows),
                "bad_rows": len(data.bad_rows),
                "tokens": sum(s.tokens for s in sets),
                "trained_tokens": sum(s.trained_tokens for s in sets),
            }
        )
    return out


def _method_report(recipe: Recipe, plugins: RecipePlugins) -> tuple[dict[str, Any], int | None]:
    """What the method's plugin says matters in the config it builds for this recipe, and how
    many parameters that config trains on the recipe's base (counted on the meta device; None
    when the base's config cannot be read). Settings peft refuses are a ModelError."""
    from transformers import AutoConfig

    from adaptool.artifacts.fit import trainable_parameters
    from adaptool.training.setup import cannot_apply, peft_config_for

    method = plugins.method
    t = recipe.training
    run = RunInfo(
        total_steps=t.max_steps,
        quantized=plugins.quantizer.quantized,
        learning_rate=t.learning_rate,
        tokenizer=recipe.model.name,
    )
    config = peft_config_for(method, recipe, run)
    described = {k: v for k, v in method.describe(config.to_dict()).items() if v is not None}
    try:
        base_config = AutoConfig.from_pretrained(
            recipe.model.name,
            revision=recipe.model.revision,
            trust_remote_code=recipe.model.trust_remote_code,
        )
    except Exception:  # the tokenizer loaded from there: the model may still be elsewhere
        return described, None
    try:
        return described, trainable_parameters(base_config, config)
    except (ValueError, TypeError, RuntimeError, KeyError) as exc:
        raise cannot_apply(method, recipe, exc) from None


def _view(row: int, encoded: Encoded, tokenizer: Any) -> ExampleView:
    segments: list[tuple[str, bool]] = []
    run: list[int] = []
    run_trained: bool | None = None
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        trained = label != IGNORE_INDEX
        if run and trained != run_trained:
            segments.append((tokenizer.decode(run), bool(run_trained)))
            run = []
        run.append(token)
        run_trained = trained
    if run:
        segments.append((tokenizer.decode(run), bool(run_trained)))
    return ExampleView(
        row=row,
        segments=segments,
        prompt_tokens=encoded.prompt_tokens,
        completion_tokens=encoded.completion_tokens,
        trained_tokens=encoded.trained_tokens,
        truncated=encoded.truncated,
    )
