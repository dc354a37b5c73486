"""``evaluate()``: generate on every row of a dataset and let the formatter score it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adaptool.adapter import open_target
from adaptool.errors import AdaptoolError
from adaptool.generate import Generation, build_prompts, generate

if TYPE_CHECKING:
    from adaptool.registry import Registry


@dataclass
class EvalResult:
    target: str
    data: str
    metrics: dict[str, float]
    base_metrics: dict[str, float] | None = None
    generations: list[Generation] = field(default_factory=list)


def evaluate(
    target: str | Path,
    *,
    data: str | Path | None = None,
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    compare_base: bool = False,
    base: str | None = None,
    quantization: str | None = None,
    registry: Registry | None = None,
) -> EvalResult:
    """Greedy generation on each row of ``data`` (a local file; default: the held-out split of
    the recipe the adapter was trained with), scored by the adapter's formatter. With
    ``compare_base``, the base without the adapter is scored too."""
    from adaptool.data import check_columns, load_rows, split_eval
    from adaptool.recipe import DataSection, load_recipe

    opened = open_target(target, base=base, quantization=quantization, registry=registry)
    formatter = opened.formatter
    if opened.formatter_error is not None:
        raise opened.formatter_error
    if formatter is None:
        raise AdaptoolError(
            f"{opened.path} has no adaptool manifest, so its formatter (which scores outputs) "
            f"is unknown; evaluate an adapter trained by `adaptool train`."
        )
    if data is not None:
        section = DataSection(source=str(Path(data).resolve()), formatter=formatter.name)
        rows = load_rows(section)
        source = str(data)
    else:
        recipe_path = opened.path / "recipe.toml"
        if not recipe_path.is_file():
            raise AdaptoolError(f"{opened.path} has no recipe.toml: pass --data FILE.")
        recipe = load_recipe(recipe_path, registry=registry)
        _, rows = split_eval(
            load_rows(recipe.data), recipe.data.eval_fraction, recipe.training.seed
        )
        if rows is None:
            raise AdaptoolError(
                f"the recipe of {opened.path} holds out no eval split (data.eval_fraction = 0): "
                f"pass --data FILE."
            )
        source = f"{recipe.data.source} (eval split)"
    check_columns(rows, formatter, source)
    rows = [rows[i] for i in range(len(rows) if limit is None else min(limit, len(rows)))]
    prompts = build_prompts(rows, formatter, opened.tokenizer, raw=False)

    def run() -> list[Generation]:
        return generate(
            opened.model,
            opened.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            add_special_tokens=not formatter.prompt_has_special_tokens,
            formatter=formatter,
        )

    outputs = run()
    result = EvalResult(
        str(opened.path),
        source,
        formatter.score(rows, outputs, opened.tokenizer),
        generations=outputs,
    )
    if compare_base and opened.kind == "adapter":
        with opened.model.disable_adapter():
            result.base_metrics = formatter.score(rows, run(), opened.tokenizer)
    return result
