"""``adaptool merge ADAPTER --output DIR``: fold an adapter into its full-precision base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptool.cli.output import console
from adaptool.merging.options import Combination, Dtype, Into


def merge_cli(
    adapter: Annotated[str | None, typer.Argument(help="Adapter dir or Hub id.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write the result.")
    ] = None,
    adapters: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="Combine several adapters: --adapter A --adapter B."),
    ] = None,
    weights: Annotated[
        list[float] | None, typer.Option("--weight", help="One per adapter (default 1/n each).")
    ] = None,
    combination: Annotated[
        Combination, typer.Option("--combine", help="How to combine several adapters (peft's).")
    ] = Combination.LINEAR,
    density: Annotated[
        float | None, typer.Option("--density", help="For ties / dare / magnitude_prune.")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Fold the combined adapter into the base as well.")
    ] = False,
    dtype: Annotated[
        Dtype, typer.Option("--dtype", help="auto: the dtype trained in, else the base's own.")
    ] = Dtype.AUTO,
    into: Annotated[
        Into,
        typer.Option(
            "--into",
            help="For an adapter trained on a quantized base: the base as trained "
            "(dequantized) or the full-precision weights (original).",
        ),
    ] = Into.DEQUANTIZED,
    base: Annotated[str | None, typer.Option("--base", help="Where the base model is.")] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip comparing merged and adapter outputs.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --output.")] = False,
) -> None:
    """Merge ADAPTER into its base model and write a standalone model.

    The merge streams one safetensors shard at a time; an adapter trained on a quantized base is
    folded into the base as it was trained (--into dequantized) or into the original weights
    (--into original), never into quantized weights. The merged model is then compared with the
    adapter as trained (max |Δ logits|, mean KL).

    With --adapter A --adapter B [--weight 0.7 --weight 0.3] --combine TYPE, several adapters
    trained on the same base become one adapter (peft's add_weighted_adapter); --full then folds
    it into the base like a single adapter.
    """
    from adaptool.errors import AdaptoolError
    from adaptool.hub.locate import locate
    from adaptool.merging.merge import merge

    if output is None:
        raise AdaptoolError("--output DIR is required.")
    sources = ([adapter] if adapter else []) + list(adapters or [])
    if not sources:
        raise AdaptoolError("give an ADAPTER dir (or several with --adapter).")
    located = [locate(source) for source in sources]
    base = base or next((found.base for found in located if found.base), None)
    out = console()
    if len(sources) > 1:
        from adaptool.merging.combine import combine as combine_adapters

        combined = combine_adapters(
            [found.path for found in located],
            output=output,
            weights=weights,
            combination=combination,
            density=density,
            full=full,
            base=base,
            overwrite=overwrite,
            dtype=dtype,
            into=into,
            verify=not no_verify,
        )
        out.print(
            f"combined {len(sources)} adapters ({combined.combination}, weights "
            f"{', '.join(f'{w:g}' for w in combined.weights)})",
            markup=False,
        )
        if combined.merged is None:
            out.print(f"adapter: {combined.output_dir}", markup=False)
            return
        result = combined.merged
    else:
        result = merge(
            located[0].path,
            output=output,
            dtype=dtype,
            into=into,
            base=base,
            verify=not no_verify,
            overwrite=overwrite,
        )
    how = f", into the {result.into} base" if result.into else ""
    out.print(
        f"merged {result.merged_modules} layers ({result.quantization} adapter{how}) in "
        f"{result.dtype}, {result.shards} shard(s), {result.seconds:.1f} s",
        markup=False,
    )
    if result.verification:
        v = result.verification
        ref, trained = v["reference"], v["as_trained"]
        out.print(
            f"verified on {v['prompts']} prompts: merged vs adapter unmerged on the same "
            f"weights: max |Δ logits| {ref['max_abs_logit_diff']:.3g} (tolerance "
            f"{v['tolerance']:g}), mean KL {ref['mean_kl']:.3g}",
            markup=False,
        )
        if result.into:
            out.print(
                f"merged vs the adapter on the {result.quantization} base as trained: "
                f"max |Δ logits| {trained['max_abs_logit_diff']:.3g}, mean KL "
                f"{trained['mean_kl']:.3g}",
                markup=False,
            )
    out.print(f"model: {result.output_dir}", markup=False)
