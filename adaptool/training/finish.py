"""Finishing a run: the manifest built from what the run did, and the output dir written so
that it is complete once ``adaptool.json`` is there — adapter, tokenizer, resolved recipe, loss
plot, model card, the held-out rows and a few formatted samples for later commands."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool.artifacts import index
from adaptool.artifacts.card import model_card
from adaptool.artifacts.layout import CARD, FINAL_TMP, HELDOUT, LOSS_PLOT, MANIFEST, RECIPE, Kind
from adaptool.artifacts.manifest import (
    Manifest,
    PeftRecord,
    PluginRecord,
    file_sha256,
    git_info,
    new_manifest,
    write_manifest,
)
from adaptool.artifacts.outputs import sync, sync_tree
from adaptool.base import ChatTemplateFormatter
from adaptool.modeling import device
from adaptool.plugins import registry
from adaptool.training.plot import plot_losses

if TYPE_CHECKING:
    from adaptool.training.setup import Session


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    total_steps: int
    interrupted: bool
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens: int = 0
    wall_time: float = 0.0
    manifest: Manifest | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    #: why a callback ended the run before its last step
    stopped_early: str | None = None
    #: what each callback reported at the end, by name
    callbacks: dict[str, Any] = field(default_factory=dict)
    #: the step whose adapter was written (a best-checkpoint callback); None: the last one
    shipped_step: int | None = None


def build_manifest(session: Session, result: TrainResult) -> Manifest:
    """What the run did, for ``adaptool.json``."""
    recipe, plugins, data = session.recipe, session.plugins, session.data
    streamed = data.stream is not None
    t = recipe.training
    quantizer, method, formatter = plugins.quantizer, plugins.method, plugins.formatter
    return new_manifest(
        Kind.ADAPTER,
        session.base,
        quantization=PluginRecord(
            quantizer.name,
            quantizer.version,
            dict(recipe.quantization.options),
            **provided_by("quantizer", quantizer.name),
        ),
        peft=PeftRecord(
            method=method.name,
            version=method.version,
            **{key: method.common(recipe.peft).get(key) for key in COMMON_KEYS},
            options=dict(recipe.peft.options),
            trainable_params=session.trainable,
            total_params=session.total_params,
            init_adapter=str(session.init_adapter) if session.init_adapter else None,
            **provided_by("peft-method", method.name),
        ),
        formatter=PluginRecord(
            formatter.name,
            formatter.version,
            dict(recipe.data.options),
            **provided_by("formatter", formatter.name),
        ),
        data={
            "source": recipe.data.source,
            "split": recipe.data.split,
            "config": recipe.data.config,
            "revision": recipe.data.revision,
            "commit": data.commit,
            # every source (the keys above are the first one's), and how they were mixed
            "sources": data.sources,
            "mix": recipe.data.mix,
            "fingerprint": None if streamed else getattr(data.rows, "_fingerprint", None),
            # a streamed source's size is not known (it was read as training went)
            "streaming": streamed,
            "rows": None if streamed else len(data.rows),
            "train_rows": None if streamed else len(data.train_set),
            "eval_rows": len(data.eval_set),
            # pretraining text: the train/eval "rows" above are blocks of max_length tokens
            "chunked": plugins.formatter.chunks,
            "train_tokens": None if streamed else data.train_set.tokens,
            "truncated": data.truncated,
            "skipped": data.dropped,
            "bad_rows_skipped": data.stream.bad_rows if streamed else len(data.bad_rows),
            "eval_fraction": recipe.data.eval_fraction,
            "max_length": recipe.data.max_length,
            "train_on_prompt": recipe.data.train_on_prompt,
        },
        training=t.model_dump()
        | {
            "steps": result.step,
            "total_steps": result.total_steps,
            "device": device(),
            "gradient_checkpointing_used": session.checkpointing,
            "packing_used": session.packing,
            "micro_batch_tokens_used": session.micro_batch_tokens,
            "chunked_loss": session.head is not None,
            "compiled": session.compiled.record(),
            # across processes: how many, how, and the optimizer step's rows
            "world_size": session.world.size,
            "strategy": session.recipe.distributed.strategy if session.world.distributed else None,
            "effective_batch": t.batch_size * t.gradient_accumulation_steps * session.world.size,
            "precision_used": session.precision,
            "stopped_early": result.stopped_early,
            "shipped_step": result.shipped_step or result.step,
            "callbacks": result.callbacks,
            "loggers": [logger.name for logger in plugins.loggers],
        },
        seed=t.seed,
        recipe={
            "path": str(recipe.path) if recipe.path else None,
            "git": git_info(recipe.path) if recipe.path else None,
        },
        results={
            "train_loss": result.train_loss,
            "eval_loss": result.eval_loss,
            "tokens": result.tokens,
            "wall_time_s": round(result.wall_time, 2),
        },
        samples=data.samples,
    )


#: the common [peft] keys a manifest records (None where the method does not use one)
COMMON_KEYS = ("r", "alpha", "dropout", "bias", "target_modules")


def provided_by(kind: str, name: str) -> dict[str, str]:
    """The distribution (and its version) that provides the plugin ``name`` of ``kind``."""
    provider = registry().entry(kind, name).provider
    return {"distribution": provider.distribution, "distribution_version": provider.version}


def write_output(
    out: Path, session: Session, manifest: Manifest, records: list[dict[str, Any]]
) -> None:
    """Everything is written to a temporary folder first, then moved in; the manifest goes
    last, so a folder with ``adaptool.json`` always holds a complete result."""
    recipe = session.recipe
    tmp = out / FINAL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    session.plugins.method.save(session.model, tmp, initial=session.initial)
    formatter = session.plugins.formatter
    if isinstance(formatter, ChatTemplateFormatter) and formatter.option("chat_template"):
        # the template trained with travels with the adapter (a file may not be there later)
        session.tokenizer.chat_template = formatter.template(session.tokenizer)
    session.tokenizer.save_pretrained(str(tmp))
    (tmp / RECIPE).write_text(recipe.to_toml(), encoding="utf-8")
    plot_losses(
        records,
        tmp / LOSS_PLOT,
        title=f"{Path(recipe.model.name).name} + "
        f"{recipe.peft.method} ({recipe.quantization.backend})",
    )
    eval_rows = session.data.eval_rows
    if eval_rows is not None:
        eval_rows.to_json(str(tmp / HELDOUT), lines=True, force_ascii=False)
        manifest.heldout = {
            "file": HELDOUT,
            "rows": len(eval_rows),
            "sha256": file_sha256(tmp / HELDOUT),
            "source": recipe.data.source,
            "fingerprint": getattr(session.data.rows, "_fingerprint", None),
        }
    # our card in place of peft's empty template; `adaptool push` writes it anew for the repo
    name = (recipe.hub.repo_id if recipe.hub else None) or str(out)
    (tmp / CARD).write_text(model_card(tmp, repo_id=name, manifest=manifest), encoding="utf-8")
    sync_tree(tmp)  # on disk before it counts: the manifest below says "complete"
    for path in sorted(tmp.iterdir()):
        os.replace(path, out / path.name)
    tmp.rmdir()
    sync(out)
    write_manifest(out, manifest)
    sync(out / MANIFEST)
    index.record_output(out, manifest, "trained")
