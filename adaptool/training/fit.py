"""The training loop: optimizer steps over length-grouped batches, the loss the mean over
completion tokens of the whole accumulated batch, metrics logged per window, evaluation and
checkpoints at their steps, Ctrl-C turned into a checkpoint. Its state (:class:`LoopState`)
is what a checkpoint saves, so a resumed run continues exactly."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool.distributed import World, all_sum, from_main, gather_to_main
from adaptool.encoding import Encoded
from adaptool.errors import TrainingError
from adaptool.modeling import device
from adaptool.sharding import is_sharded, whole_adapter, whole_optimizer_state
from adaptool.training.batching import collate, collate_for, step_share
from adaptool.training.checkpoint import (
    capture_rng,
    latest_checkpoint,
    resume_key,
    save_checkpoint,
)
from adaptool.training.loss import loss_sum
from adaptool.training.metrics import append_metrics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adaptool.base import TrainingContext
    from adaptool.training.progress import Reporter
    from adaptool.training.setup import Session


@dataclass
class Window:
    """The open logging window: what the next logged record averages over."""

    loss: float = 0.0
    trained_tokens: int = 0
    real_tokens: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class LoopState:
    """Where the loop is: the step, the real tokens seen, the open window, the last eval loss.
    Saved in every checkpoint and restored on resume."""

    step: int = 0
    tokens: int = 0
    window: Window = field(default_factory=Window)
    last_eval: float | None = None

    def to_checkpoint(self, total_steps: int) -> dict[str, Any]:
        w = self.window
        return {
            "tokens": self.tokens,
            "total_steps": total_steps,
            "window": [w.loss, w.trained_tokens, w.real_tokens],
            "last_eval": self.last_eval,
        }

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> LoopState:
        loss, trained, real = state.get("window", [0.0, 0, 0])
        return cls(
            step=state["step"],
            tokens=state.get("tokens", 0),
            window=Window(loss, trained, real),
            last_eval=state.get("last_eval"),
        )


@dataclass
class FitOutcome:
    state: LoopState
    records: list[dict[str, Any]]
    interrupted: bool
    #: why a callback ended the run early (None: it ran to its last step, or was interrupted)
    stopped_early: str | None = None


def fit(
    session: Session,
    context: TrainingContext,
    state: LoopState,
    records: list[dict[str, Any]],
    reporter: Reporter,
) -> FitOutcome:
    """Run from ``state.step`` to the session's last step (or a Ctrl-C, or a callback's stop),
    logging to the output dir's metrics and the recipe's loggers, checkpointing there."""
    started = []
    try:
        for logger in session.plugins.loggers if session.world.main else []:
            logger.start(context)
            started.append(logger)
        return _loop(session, context, state, records, reporter)
    finally:
        for logger in started:
            logger.finish(context)


def _loop(
    session: Session,
    context: TrainingContext,
    state: LoopState,
    records: list[dict[str, Any]],
    reporter: Reporter,
) -> FitOutcome:
    import torch

    out = context.output_dir
    callbacks, loggers = session.plugins.callbacks, session.plugins.loggers

    t = session.recipe.training
    model, optimizer, scheduler = session.model, session.optimizer, session.scheduler
    method = session.plugins.method
    feed, eval_set = session.feed, session.data.eval_set
    total_steps, budget = session.total_steps, session.micro_batch_tokens
    dev = device()
    autocast, scaler = mixed_precision(session.precision, dev)
    tokenizer = session.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pack = collate_for(session.packing)
    packed = session.packing is True
    head = session.head
    eval_every = t.eval_steps or t.save_steps or total_steps
    window = state.window
    window.started = time.monotonic()
    reporter.start(total=total_steps, initial=state.step)
    grad_norm: float | None = None
    context.step = state.step
    world = session.world
    runner = session.runner  # the model as it trains: DDP-wrapped across processes
    main = world.main
    sharded = is_sharded(model)  # FSDP: every forward is a collective
    stopping = False  # agreed by every process: a Ctrl-C any of them saw in the last step
    # a method that skips modules at random (LoHa's, LoKr's, OFT's module_dropout) can leave
    # a micro-batch's loss without a trainable parameter (nothing to backpropagate), or a
    # parameter out of a step (DDP waits for its gradient): each gets a zero term instead
    anchored = bool(getattr(model.peft_config.get("default"), "module_dropout", 0))
    with StopOnInterrupt(reporter, launched=world.distributed) as stop:
        while state.step < total_steps and not stopping and context.stop_reason is None:
            runner.train()
            # a batch of the plan is the step's rows; this process takes its share, cut into
            # micro-batches (to the token budget, or of batch_size rows), as many as the
            # busiest process's (a spare one counts for nothing): together the processes take
            # what one process with world.size times the accumulation would
            group, counted = step_share(
                feed.batch(state.step), world, rows=t.batch_size, budget=budget, packed=packed
            )
            local_trained = sum(e.trained_tokens for examples in group[:counted] for e in examples)
            n_trained = int(all_sum([local_trained])[0])
            step_loss = step_real = 0.0
            for i, examples in enumerate(group):
                batch = pack(examples, pad_id)
                batch = {k: v.to(dev) for k, v in batch.items()}
                last_micro = i == len(group) - 1
                with _sync_unless(runner, last_micro):
                    with autocast():
                        summed = loss_sum(runner, batch, head=head)
                    if i >= counted:  # a spare: in the collectives, not in the step
                        summed = summed * 0.0
                    # the mean over the trained tokens of the whole step, on every process;
                    # DDP averages gradients over the world, hence the world.size
                    scaled = summed * world.size / n_trained
                    extra = method.loss_term(model)
                    if extra is not None:  # a method's regulariser, once per optimizer step
                        scaled = scaled + extra / len(group)
                    if anchored:  # every trainable parameter in the graph, with no effect
                        scaled = scaled + 0.0 * sum(p.reshape(-1)[0] for p in session.params)
                    (scaler.scale(scaled) if scaler else scaled).backward()
                if i < counted:
                    step_loss += summed.item()
                    step_real += sum(len(e.input_ids) for e in examples)
            step_loss, step_real, asked = all_sum([step_loss, step_real, stop.requested])
            stopping = asked > 0  # the same on every process, whenever each saw the signal
            if not math.isfinite(step_loss):
                raise _diverged(f"the loss became {step_loss}", state.step + 1, out, t)
            window.loss += step_loss
            window.real_tokens += int(step_real)
            window.trained_tokens += n_trained
            if scaler is not None:
                scaler.unscale_(optimizer)
            if t.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(session.params, t.max_grad_norm)
                # over FSDP's shards the norm is a distributed tensor: the whole one's value
                grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()
                if scaler is None and not math.isfinite(grad_norm):
                    raise _diverged(f"the gradients became {grad_norm}", state.step + 1, out, t)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            method.after_optimizer_step(model, state.step)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            step = context.step = state.step
            record: dict[str, Any] | None = None
            if step % t.logging_steps == 0 or step == total_steps:
                elapsed = max(time.monotonic() - window.started, 1e-9)
                state.tokens += window.real_tokens
                epoch = feed.epoch(step)
                record = {
                    "step": step,
                    **({"epoch": round(epoch, 4)} if epoch is not None else {}),
                    "loss": window.loss / max(window.trained_tokens, 1),
                    "lr": scheduler.get_last_lr()[0],
                    "tokens": state.tokens,
                    "tokens_per_s": window.real_tokens / elapsed,
                }
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                window = state.window = Window()
            # every process evaluates its share; the main process logs, runs the callbacks
            # and writes, the others go on to the next step's collectives and wait there
            if eval_set and (step % eval_every == 0 or step == total_steps):
                state.last_eval = evaluate_loss(
                    model, eval_set, t.batch_size, pad_id, world=world, lockstep=sharded, head=head
                )
                record = (record or {"step": step}) | {"eval_loss": state.last_eval}
                # a callback may save the adapter (the best one): whole under FSDP
                with whole_adapter(model) if sharded and callbacks else nullcontext():
                    for callback in callbacks if main else []:
                        record |= callback.on_eval(context, record)
            if main and record is not None:
                records.append(record)
                append_metrics(out, record)
                reporter.log(record)
                for logger in loggers:
                    logger.log(record)
            for callback in callbacks if main else []:
                callback.on_step(context, record)
            if callbacks and world.distributed:  # a callback's stop ends every process
                context.stop_reason = from_main(context.stop_reason)
            at_save = t.save_steps and step % t.save_steps == 0
            ending = context.stop_reason is not None
            if not world.distributed:  # one process: a Ctrl-C up to now is this step's
                stopping = stop.requested
            checkpointing = step < total_steps and not ending and (at_save or stopping)
            if checkpointing:
                _checkpoint(session, context, state, step)
        # a run a callback ended is finished (its output is written), Ctrl-C or not
        interrupted = stopping and state.step < total_steps and context.stop_reason is None
    reporter.finish()
    early = context.stop_reason if state.step < total_steps else None
    return FitOutcome(state, records, interrupted, early)


def _checkpoint(session: Session, context: TrainingContext, state: LoopState, step: int) -> None:
    """Every process takes part (its generators; under FSDP its shards of the adapter and
    optimizer state, gathered whole); the main process writes."""
    callbacks = session.plugins.callbacks
    # every process's generators, for a resume that draws the same dropout on each
    rngs = gather_to_main(capture_rng())
    with whole_adapter(session.model):
        optimizer_state = whole_optimizer_state(session.optimizer)
        if session.world.main:
            saved = save_checkpoint(
                context.output_dir,
                step=step,
                model=session.model,
                method=session.plugins.method,
                optimizer_state=optimizer_state,
                scheduler=session.scheduler,
                rng_state=rngs[0],
                other_ranks=rngs[1:],
                extra=state.to_checkpoint(session.total_steps)
                | {
                    "recipe": resume_key(session.recipe),
                    "data": session.data.key(),
                    "callbacks": {c.name: c.state_dict() for c in callbacks},
                    "convert_at_save": session.initial is not None,
                    "world_size": session.world.size,
                    # how the steps' rows were cut and run: a resume does alike
                    "micro_batch_tokens": session.micro_batch_tokens,
                    "compiled": session.compiled.blocks > 0,
                    "strategy": session.recipe.distributed.strategy
                    if session.world.distributed
                    else None,
                },
            )
            for callback in callbacks:
                callback.on_save(context, saved)


def _sync_unless(runner: Any, last: bool) -> Any:
    """Gradients are averaged across processes once per optimizer step, at its last
    micro-batch (DDP's ``no_sync`` for the others; FSDP's gradient sync switched off)."""
    import contextlib

    if hasattr(runner, "set_requires_gradient_sync"):  # FSDP2: set for every micro-batch
        runner.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if last or not hasattr(runner, "no_sync"):
        return contextlib.nullcontext()
    return runner.no_sync()


def _diverged(what: str, step: int, out: Path, t: Any) -> TrainingError:
    """Training stops before a non-finite step is applied or saved."""
    last = latest_checkpoint(out)
    kept = f"the last good checkpoint, {last.name}, is kept" if last else "no checkpoint was made"
    return TrainingError(
        f"{what} at step {step}: training diverged (training.learning_rate = "
        f"{t.learning_rate:g}) and stopped before applying it; {kept}. Lower the learning rate "
        f"(or raise training.warmup_steps) and start again."
    )


#: seconds within which a launched process takes a second SIGINT for the agent's copy
FORWARDED_WITHIN = 2.0


class StopOnInterrupt:
    """Ctrl-C (SIGINT) asks the loop to stop after the current optimizer step, which is then
    checkpointed; a second Ctrl-C stops at once. Outside the main thread it does nothing.
    In a launched world (``launched``) the launcher passes the terminal's Ctrl-C on to every
    process; where the processes share the terminal's session too (a launcher that does not
    start them in their own) each gets it twice at once: a second one within
    :data:`FORWARDED_WITHIN` seconds is that copy, not a second Ctrl-C."""

    def __init__(self, reporter: Reporter, *, launched: bool = False) -> None:
        self.reporter = reporter
        self.requested = False
        self.launched = launched
        self._at = 0.0
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.requested and self.launched and now - self._at < FORWARDED_WITHIN:
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self._at = True, now
        self.reporter.info(
            "interrupt: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)"
        )

    def __enter__(self) -> StopOnInterrupt:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def mixed_precision(precision: str, dev: str) -> tuple[Any, Any]:
    """On a GPU, fp16/bf16 run under autocast (fp16 with loss scaling). On the CPU training
    stays in the weights' dtype: CPU autocast doubles peak memory for no speed, and CPU fp16
    is not supported, so fp16 there means fp32 (said once)."""
    import contextlib

    import torch

    if dev == "cuda" and precision in ("fp16", "bf16"):
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        return (lambda: torch.autocast("cuda", dtype=dtype)), scaler
    if precision == "fp16":
        import warnings

        warnings.warn('precision = "fp16" needs a GPU; training in fp32 on the CPU', stacklevel=3)
    return contextlib.nullcontext, None


def evaluate_loss(
    model: Any,
    data: Sequence[Encoded],
    batch_size: int,
    pad_id: int,
    *,
    world: World | None = None,
    lockstep: bool = False,
    head: Any = None,
) -> float:
    """Mean loss per trained token over ``data`` (no dropout, no gradients). Across
    processes (``world``) each evaluates every world.size-th batch and the sums are added;
    ``lockstep`` (FSDP, whose forward is a collective): each runs as many forwards as the
    busiest, one it does not count where it has run out. ``head``: the loss taken on it in
    chunks (:func:`~adaptool.training.loss.loss_sum`)."""
    import torch

    world = world or World()
    model.eval()
    dev = device()
    starts = list(range(0, len(data), batch_size))
    mine = starts[world.rank :: world.size]
    rounds = math.ceil(len(starts) / world.size) if lockstep else len(mine)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(rounds):
            start = mine[i] if i < len(mine) else starts[0]
            chunk = data[start : start + batch_size]
            batch = {k: v.to(dev) for k, v in collate(chunk, pad_id).items()}
            summed = loss_sum(model, batch, head=head).item()
            if i < len(mine):
                total += summed
                count += sum(e.trained_tokens for e in chunk)
    model.train()
    total, count = all_sum([total, count])
    return total / max(count, 1)
