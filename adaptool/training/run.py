"""``train()``: recipe -> adapter directory (peft-loadable, with manifest, metrics and plot).

Three steps, as litgpt splits its own: :func:`~adaptool.training.setup.setup` loads and checks
everything (nothing is written until it has), :func:`~adaptool.training.fit.fit` runs the loop
(a plain PyTorch loop rather than ``transformers.Trainer``: length-grouped batches, the loss
the mean over completion tokens of the whole accumulated batch, every piece of state
checkpointed so that an interrupted run resumed with ``resume`` ends with the same adapter as
an uninterrupted one), and :mod:`~adaptool.training.finish` writes the result.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from adaptool.artifacts.artifact import Artifact
from adaptool.artifacts.layout import MANIFEST, Kind
from adaptool.artifacts.outputs import check_output, mark
from adaptool.base import TrainingContext
from adaptool.distributed import barrier, current
from adaptool.errors import AdaptoolError, OutputExists, param
from adaptool.evaluate import score_rows
from adaptool.modeling import release_memory
from adaptool.recipe.resolve import resolve_plugins
from adaptool.sharding import whole_adapter
from adaptool.training.checkpoint import (
    check_resumable,
    initial_adapter,
    latest_checkpoint,
    restore_training,
)
from adaptool.training.finish import TrainResult, build_manifest, write_output
from adaptool.training.fit import FitOutcome, LoopState, fit
from adaptool.training.metrics import last, read_metrics, write_metrics
from adaptool.training.progress import Reporter
from adaptool.training.setup import Session, setup
from adaptool.training.speed import limit_kernel_caches

if TYPE_CHECKING:
    from adaptool.recipe.schema import Recipe

__all__ = ["TrainResult", "train"]


def train(
    recipe: Recipe,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    init_adapter: Path | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train the adapter ``recipe`` describes into ``output_dir`` (default ``output.dir``),
    starting from the adapter folder ``init_adapter`` when given.

    Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and returns with
    ``interrupted=True``; ``resume=True`` continues from the newest checkpoint there. Nothing
    is written to the output dir until data and model have loaded. Unless already set, it
    bounds this process's CPU matmul kernel caches (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``,
    ``LRU_CACHE_CAPACITY``: :func:`~adaptool.training.speed.limit_kernel_caches`) for as long
    as it runs, where no bf16 matmul has run before."""
    started = time.monotonic()
    limit_kernel_caches()  # before this process's first matmul, where it is the first
    world = current()  # set by torchrun / accelerate launch; a world of one otherwise
    reporter = (reporter or Reporter()) if world.main else Reporter()
    out = Path(output_dir).resolve() if output_dir is not None else Path(recipe.output.dir)
    if resume and init_adapter is not None:
        raise AdaptoolError(
            f"{param('resume', 'True')} and {param('init_adapter', 'DIR')} exclude each other: "
            f"resume continues a run, init_adapter starts a new one from an adapter."
        )
    if init_adapter is not None:
        init_adapter = Artifact.read(Path(init_adapter), expect=Kind.ADAPTER).path
    local_inputs = (
        init_adapter,
        recipe.model.name if recipe.model.is_local else None,
        recipe.data.source if recipe.data.is_local else None,
        recipe.path,
    )
    checkpoint = _check_output(
        out, resume=resume, overwrite=overwrite, inputs=[p for p in local_inputs if p]
    )
    if checkpoint is not None:
        check_resumable(checkpoint, recipe, world_size=world.size)
    session = setup(
        recipe,
        resolve_plugins(recipe),
        init_adapter=init_adapter,
        reporter=reporter,
        world=world,
        checkpoint=checkpoint,
    )
    state, records = LoopState(), []
    if checkpoint is not None:
        saved = restore_training(
            checkpoint, optimizer=session.optimizer, scheduler=session.scheduler, rank=world.rank
        )
        state = LoopState.from_checkpoint(saved)
        if "micro_batch_tokens" not in saved:
            raise AdaptoolError(
                f"{param('resume', 'True')}: the checkpoint {checkpoint} was written by an "
                f"earlier adaptool, which cut the steps' rows into batches another way; "
                f"resuming would not continue its run. Start it again with "
                f"{param('overwrite', 'True')}."
            )
        # the steps' rows cut as before (dropout draws by shape): the budget it resolved
        session.micro_batch_tokens = saved.get("micro_batch_tokens", session.micro_batch_tokens)
        _check_same_data(saved.get("data"), session.data.key(), checkpoint)
        if saved.get("total_steps") not in (None, session.total_steps):
            reporter.info(
                f"warning: the checkpoint's run had {saved['total_steps']} steps, this recipe "
                f"has {session.total_steps}; the learning-rate schedule continues with "
                f"{session.total_steps}"
            )
        records = [r for r in read_metrics(out) if r["step"] <= state.step]
        if state.last_eval is None:
            state.last_eval = last(records, "eval_loss")
        convert = saved.get("convert_at_save", session.plugins.method.needs_initial_state())
        session.initial = initial_adapter(out) if convert else None
        if session.initial is not None and not session.initial.is_dir():
            raise AdaptoolError(
                f"{param('resume', 'True')}: {session.initial}, the adapter as initialised, is "
                f"missing, and the {session.plugins.method.title()} adapter cannot be saved "
                f"converted without it; start the run again with {param('overwrite', 'True')}."
            )
        reporter.info(f"resuming from {checkpoint} (step {state.step}/{session.total_steps})")
    elif init_adapter is None and session.plugins.method.needs_initial_state():
        session.initial = initial_adapter(out)

    # everything loaded and checked: only now is the output dir touched (by the main process)
    barrier()
    if world.main:
        _claim_output(out, checkpoint=checkpoint, overwrite=overwrite)
        write_metrics(out, records)
    if checkpoint is None and session.initial is not None:
        # before the first step: the adapter as initialised, for the conversion at save
        with whole_adapter(session.model):
            if world.main:
                tmp = session.initial.with_name(session.initial.name + ".tmp")
                session.model.save_pretrained(str(tmp))
                os.replace(tmp, session.initial)

    context = TrainingContext(
        output_dir=out,
        recipe=recipe,
        total_steps=session.total_steps,
        model=session.model,
        tokenizer=session.tokenizer,
        formatter=session.plugins.formatter,
        method=session.plugins.method,
        eval_rows=session.data.eval_rows,
        resumed_from=state.step if checkpoint is not None else None,
        scorer=score_rows,
    )
    if checkpoint is not None:
        saved_states = saved.get("callbacks") or {}
        for callback in session.plugins.callbacks:
            callback.load_state_dict(saved_states.get(callback.name) or {})
    outcome = fit(session, context, state, records, reporter)
    result = TrainResult(
        output_dir=out,
        step=outcome.state.step,
        total_steps=session.total_steps,
        interrupted=outcome.interrupted,
        train_loss=last(outcome.records, "loss"),
        eval_loss=outcome.state.last_eval,
        tokens=outcome.state.tokens,
        wall_time=time.monotonic() - started,
        records=outcome.records,
    )
    # under FSDP the adapter is gathered whole (every process takes part) for the output
    with whole_adapter(session.model):
        if outcome.interrupted or not world.main:  # only the main process writes the output
            return result
        _finish(session, context, outcome, result, reporter)
    return result


def _finish(
    session: Session,
    context: TrainingContext,
    outcome: FitOutcome,
    result: TrainResult,
    reporter: Reporter,
) -> None:
    """The main process writes the trained adapter, manifest, card and plot."""
    out = context.output_dir
    if outcome.stopped_early:
        reporter.info(f"{outcome.stopped_early}; stopped at step {outcome.state.step}")
    result.stopped_early = outcome.stopped_early
    result.callbacks = {c.name: c.on_end(context) for c in session.plugins.callbacks}
    shipped = [r["shipped_step"] for r in result.callbacks.values() if r.get("shipped_step")]
    if shipped:
        result.shipped_step = shipped[-1]
        at = [r for r in outcome.records if r["step"] == result.shipped_step]
        result.eval_loss = last(at, "eval_loss")
        if result.shipped_step != outcome.state.step:
            reporter.info(
                f"shipping the adapter of step {result.shipped_step}, the best evaluation "
                f"(not the last step's, {outcome.state.step})"
            )
    session.optimizer = session.scheduler = None
    session.model.zero_grad(set_to_none=True)
    release_memory()  # the training step's freed buffers go back before saving and plotting
    session.model.config.use_cache = True
    result.manifest = build_manifest(session, result)
    write_output(out, session, result.manifest, outcome.records)


def _check_same_data(saved: dict | None, now: dict, checkpoint: Path) -> None:
    """A resumed run must train on the examples the checkpoint's run did: other rows (an
    edited file, a moved Hub revision), formatter or tokenizer would make different batches,
    and the run would end somewhere neither run would have."""
    if saved is None or saved == now:  # a checkpoint of an earlier version records none
        return
    if saved.get("sources") != now["sources"]:
        what = f"its sources were {saved.get('sources')}, now {now['sources']}"
    else:
        what = "its examples changed (the rows, the formatter, the tokenizer or [data] settings)"
    raise AdaptoolError(
        f"{param('resume', 'True')}: the training data is not what the run of {checkpoint} "
        f"trained on: {what}. Resume with the data it started with, or start a new run "
        f"({param('overwrite', 'True')})."
    )


def _check_output(out: Path, *, resume: bool, overwrite: bool, inputs: list) -> Path | None:
    """Refuse to clobber an existing result or an input (touching nothing); return the
    checkpoint to resume from."""
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise AdaptoolError(
                f"{param('resume', 'True')}: {out} holds no checkpoint to resume from (a run "
                f"writes one every training.save_steps and on Ctrl-C)."
            )
        return checkpoint
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExists(
            f"the output directory {out} already exists and is not empty. Use "
            f"{param('resume', 'True')} to continue its run, {param('overwrite', 'True')} to "
            f"replace it, or {param('output', 'DIR')} for another one."
        )
    check_output(out, overwrite=overwrite, inputs=inputs)
    return None


def _claim_output(out: Path, *, checkpoint: Path | None, overwrite: bool) -> None:
    """Make the output dir ours: on resume the old result stops counting as complete (its
    manifest goes until the end); with overwrite the old contents go."""
    if checkpoint is not None:
        (out / MANIFEST).unlink(missing_ok=True)
        mark(out, "train")
        return
    if overwrite and out.exists():
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "train")
