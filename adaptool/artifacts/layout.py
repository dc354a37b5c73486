"""The layout of what adaptool writes and reads: every file name of an adapter dir, a merged
model dir and a training run, and :func:`classify`, which says what a listing of file names
holds — alike for a local folder, a Hub repo's file list, and ``inspect``.

Nothing here reads a file's contents; :mod:`adaptool.artifacts.artifact` does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

from adaptool.errors import AdapterError

# -- what adaptool writes ----------------------------------------------------------------------
MANIFEST = "adaptool.json"
RECIPE = "recipe.toml"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
CARD = "README.md"
#: the held-out rows of a training run (raw, as loaded), for `eval` without --data
HELDOUT = "heldout.jsonl"
CHECKPOINTS = "checkpoints"
#: where train assembles its final output before moving it in
FINAL_TMP = ".final.tmp"

# -- what peft and transformers write ----------------------------------------------------------
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    TOKENIZER_CONFIG,
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)

# -- checkpoints (under CHECKPOINTS/step-NNNNNNN) ----------------------------------------------
CHECKPOINT_STATE = "trainer_state.json"
CHECKPOINT_OPTIMIZER = "optimizer.safetensors"
#: the adapter as initialised, for methods that convert at save (PiSSA/OLoRA): CHECKPOINTS/initial
INITIAL_ADAPTER = "initial"

#: weights serialized with pickle: loading them can run arbitrary code, adaptool never does
PICKLE = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")

#: the files an adapter or merged model owns, by name (shards by their pattern): what push
#: uploads, what pull downloads, and what a push replaces; nothing else in a folder (a stray
#: credentials.json) ever leaves it
OWNED = (
    ADAPTER_CONFIG,
    "*.safetensors",  # weights only: a merged model keeps its base's shard names
    MODEL_CONFIG,
    MODEL_INDEX,
    GENERATION_CONFIG,
    *TOKENIZER_FILES,
    MANIFEST,
    RECIPE,
    METRICS,
    LOSS_PLOT,
)
#: the marker adaptool writes into every output folder it makes (train, merge, combine,
#: pull --output): with the manifest, the only proof that a folder is adaptool's to replace
MARKER = ".adaptool"


class Kind(StrEnum):
    """What a folder (or a repo) holds."""

    ADAPTER = "adapter"
    MERGED = "merged"


def matches(name: str, patterns: Iterable[str]) -> bool:
    """``name`` matches one of the glob ``patterns``."""
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def pickled(names: Iterable[str]) -> list[str]:
    """The names that are pickle files, sorted."""
    return sorted(n for n in names if matches(n, PICKLE))


def top_level(folder: Path) -> list[str]:
    """The names of the files directly in ``folder`` (what :func:`classify` reads)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def classify(names: Iterable[str], where: str) -> Kind:
    """What the top-level file ``names`` of ``where`` (a folder or a Hub repo) hold: an adapter
    (peft config + safetensors weights) or a merged model (config + safetensors weights).
    Anything else — pickle-only weights, no weights, neither config — is an AdapterError
    naming ``where``."""
    names = set(names)
    if ADAPTER_CONFIG in names:
        if ADAPTER_WEIGHTS in names:
            return Kind.ADAPTER
        pickle = pickled(names)
        if pickle:
            raise AdapterError(
                f"{where} holds only pickle weights ({pickle[0]}); adaptool loads safetensors "
                f"only, since unpickling can run arbitrary code. Convert them with peft where "
                f"you trust the source (or ask its owner for safetensors), then try again."
            )
        raise AdapterError(f"{where} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}.")
    if MODEL_CONFIG in names:
        if any(n.endswith(".safetensors") for n in names):
            return Kind.MERGED
        raise AdapterError(
            f"{where} holds a model without safetensors weights; adaptool loads no pickle weights."
        )
    raise AdapterError(
        f"{where} holds neither an adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) nor a model "
        f"({MODEL_CONFIG} + *.safetensors)."
    )
