"""``adaptool merge ADAPTER --output DIR``: fold an adapter into its full-precision base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptool.cli.output import console


def merge_cli(
    adapter: Annotated[str, typer.Argument(help="Adapter dir.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the model.")],
    dtype: Annotated[
        str, typer.Option("--dtype", help="bf16, fp16, fp32, or auto (the base's own dtype).")
    ] = "auto",
    into: Annotated[
        str,
        typer.Option(
            "--into",
            help="For an adapter trained on a quantized base: 'dequantized' (the base as "
            "trained, default) or 'original' (the full-precision weights).",
        ),
    ] = "dequantized",
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
    """
    from adaptool.merge import merge

    result = merge(
        adapter,
        output=output,
        dtype=dtype,
        into=into,
        base=base,
        verify=not no_verify,
        overwrite=overwrite,
    )
    out = console()
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
