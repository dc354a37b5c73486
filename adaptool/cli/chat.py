"""``adaptool chat TARGET``: a conversation in the terminal, on the server's generation code."""

from __future__ import annotations

from typing import Annotated

import typer

from adaptool.cli.output import console

HELP_LINE = "/reset starts over, /exit (or Ctrl-D) ends"


def chat_cli(
    target: Annotated[str, typer.Argument(help="Adapter dir or Hub id (or --base alone).")] = "",
    base: Annotated[str | None, typer.Option("--base", help="Where the base lives.")] = None,
    quantization: Annotated[
        str | None, typer.Option("--quantization", help="Load the base with this backend.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0: greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.01, max=1.0)] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", min=0)] = None,
) -> None:
    """Chat with TARGET turn by turn: each reply streams, and the conversation so far goes
    into the next prompt through the adapter's chat template."""
    from adaptool.serving.chat import Conversation
    from adaptool.serving.engine import Sampling
    from adaptool.serving.server import open_engine, parse_adapters

    pairs = parse_adapters([target], []) if target else []
    engine = open_engine(pairs, base=base, quantization=quantization)
    model = pairs[0][0] if pairs else None
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    conversation = Conversation(engine, model, sampling=sampling, system=system)
    out = console()
    out.print(f"chatting with {model or engine.base_id} ({HELP_LINE})", style="dim", markup=False)
    while True:
        try:
            text = input("> ")
        except EOFError:
            break
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            conversation.reset()
            out.print("(a new conversation)", style="dim")
            continue
        if not text.strip():
            continue
        conversation.say(text, on_text=lambda piece: out.print(piece, end="", markup=False))
        out.print()
