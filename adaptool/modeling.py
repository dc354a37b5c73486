"""Loading bases and tokenizers the same way for every command (Hub ids and local paths)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adaptool.errors import ModelError

if TYPE_CHECKING:
    from adaptool.recipe import ModelSection


def load_tokenizer(model: ModelSection, *, token: str | None = None) -> Any:
    """The base model's tokenizer, with a pad token (EOS when the tokenizer has none)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model.name,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            token=token,
        )
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors here
        where = (
            "the folder needs tokenizer files (tokenizer.json or a slow tokenizer's vocab)"
            if model.is_local
            else "a Hub id needs the network (and HF_TOKEN for gated models)"
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(
            f"could not load the tokenizer of model.name = '{model.name}': "
            f"{type(exc).__name__}: {first} ({where})."
        ) from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
