"""``adaptool generate TARGET [PROMPT ...]``: run an adapter or a merged model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from adaptool.cli.output import console
from adaptool.errors import AdaptoolError


def read_prompts_file(path: Path) -> list[Any]:
    """One prompt per line; in a .jsonl file each line is a row (an object) or a string."""
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as exc:
        raise AdaptoolError(
            f"--prompts-file {path}: not UTF-8 text (byte {exc.start} is "
            f"{exc.object[exc.start]:#04x})."
        ) from None
    except OSError as exc:
        raise AdaptoolError(f"--prompts-file {path}: cannot read it ({exc}).") from None
    if path.suffix.lower() != ".jsonl":
        return lines
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise AdaptoolError(
                f"--prompts-file {path}, line {number}: not valid JSON ({exc})."
            ) from None
        if not isinstance(row, str | dict):
            raise AdaptoolError(
                f"--prompts-file {path}, line {number}: a row (a JSON object) or a prompt (a "
                f"JSON string) is expected, found {line.strip()[:40]}."
            )
        rows.append(row)
    return rows


def generate_cli(
    target: Annotated[str, typer.Argument(help="Adapter dir, merged model dir, or Hub id.")],
    prompts: Annotated[
        list[str] | None, typer.Argument(help="Raw inputs for the adapter's formatter.")
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts-file", "-f", help="A prompt per line, or .jsonl rows.")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Pass prompts through untouched.")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0: greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, max=2**63 - 1, help="Seed for sampling.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per prompt.")] = False,
    compare_base: Annotated[
        bool, typer.Option("--compare-base", help="Also show the base without the adapter.")
    ] = False,
    base: Annotated[str | None, typer.Option("--base", help="Where the base model is.")] = None,
    quantization: Annotated[
        str | None, typer.Option("--quantization", help="Load the base with this backend.")
    ] = None,
) -> None:
    """Generate with TARGET from PROMPTs built by the adapter's formatter.

    For the quote tagger, `adaptool generate runs/tiny-tagger "Be yourself."` builds the
    “quote” ->: prompt itself; --raw sends prompts as they are.
    """
    from adaptool.artifacts.loading import open_target
    from adaptool.generate import build_prompts, generate
    from adaptool.hub.locate import locate

    inputs: list[Any] = list(prompts or [])
    if prompts_file is not None:
        inputs += read_prompts_file(prompts_file)
    if not inputs:
        raise AdaptoolError("give at least one PROMPT or --prompts-file FILE.")
    if raw and any(not str(i) for i in inputs):
        raise AdaptoolError(
            "an empty PROMPT with --raw gives the model nothing to continue from; give some "
            "text (or leave out --raw to let the adapter's formatter build the prompt)."
        )
    located = locate(target)
    opened = open_target(located.path, base=located.base_or(base), quantization=quantization)
    if opened.formatter_error is not None and not raw:
        raise AdaptoolError(f"{opened.formatter_error} (or pass --raw to send prompts as they are)")
    formatter = None if raw else opened.formatter
    texts = build_prompts(inputs, formatter, opened.tokenizer, raw=raw)
    special = not (formatter is not None and formatter.prompt_has_special_tokens)
    out = console()
    stream = len(texts) == 1 and not as_json and not compare_base and out.is_terminal

    def run(streaming: bool) -> list:
        streamer = None
        if streaming:
            from transformers import TextStreamer

            streamer = TextStreamer(opened.tokenizer, skip_prompt=True, skip_special_tokens=True)
        return generate(
            opened.model,
            opened.tokenizer,
            texts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            batch_size=batch_size,
            add_special_tokens=special,
            formatter=formatter,
            streamer=streamer,
            seed=seed,
        )

    if stream:
        out.print(texts[0], end="", markup=False, style="dim")
    results = run(stream)
    base_results = None
    if compare_base and opened.kind == "adapter":
        with opened.model.disable_adapter():
            base_results = run(False)
    if stream:
        return
    for i, result in enumerate(results):
        if as_json:
            record = {"input": inputs[i]} | result.as_dict()
            if base_results is not None:
                record["base"] = base_results[i].as_dict()
            typer.echo(json.dumps(record, ensure_ascii=False))
            continue
        stop = "" if result.stopped else "  [no EOS: cut at --max-new-tokens]"
        out.print(result.prompt, end="", markup=False, style="dim")
        out.print(result.output + stop, markup=False)
        if base_results is not None:
            out.print(f"  base: {base_results[i].output}", markup=False, style="yellow")
