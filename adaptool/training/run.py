"""``train()``: recipe -> adapter directory (peft-loadable, with manifest, metrics and plot).

A plain PyTorch loop rather than ``transformers.Trainer``: batches are length-grouped (little
padding), the loss is the mean over completion tokens of the whole accumulated batch, and every
piece of state (adapter, optimizer, scheduler, RNG, position in the data) is checkpointed so
that an interrupted run resumed with ``--resume`` ends with the same adapter as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool import store
from adaptool.adapter import check_adapter_dir
from adaptool.batching import BatchPlan, collate
from adaptool.checkpoint import capture_rng, latest_checkpoint, load_checkpoint, save_checkpoint
from adaptool.data import check_columns, load_rows, split_eval
from adaptool.encoding import IGNORE_INDEX, Encoded, encode_rows
from adaptool.errors import AdapterError, AdaptoolError, DataError, describe
from adaptool.manifest import (
    MANIFEST,
    content_hash,
    git_info,
    library_versions,
    now,
    write_json,
)
from adaptool.modeling import (
    device,
    load_base,
    load_tokenizer,
    release_memory,
    resolve_precision,
    weights_dtype,
)
from adaptool.outputs import check_output
from adaptool.progress import Reporter

if TYPE_CHECKING:
    from adaptool.recipe import Recipe
    from adaptool.registry import Registry

METRICS = "metrics.jsonl"
FINAL_TMP = ".final.tmp"


class OutputExists(AdaptoolError):
    """The output directory already holds something and neither resume nor overwrite was asked."""


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
    manifest: dict[str, Any] = field(default_factory=dict)


def train(
    recipe: Recipe,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    init_adapter: str | Path | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    token: str | None = None,
) -> TrainResult:
    """Train the adapter ``recipe`` describes into ``output_dir`` (default ``output.dir``).

    Ctrl-C (SIGINT) finishes the current step, writes a checkpoint and returns with
    ``interrupted=True``; ``resume=True`` continues from the newest checkpoint there. Nothing
    is written to the output dir until data and model have loaded."""
    import torch

    started = time.monotonic()
    reporter = reporter or Reporter()
    out = Path(output_dir).resolve() if output_dir is not None else Path(recipe.output.dir)
    if resume and init_adapter is not None:
        raise AdaptoolError(
            "--resume and --init-adapter exclude each other: resume continues "
            "a run, --init-adapter starts a new one from an adapter."
        )
    if init_adapter is not None:
        from adaptool.hub import locate

        init_adapter = check_adapter_dir(locate(init_adapter, token=token).path)
    local_inputs = (
        init_adapter,
        recipe.model.name if recipe.model.is_local else None,
        recipe.data.source if recipe.data.is_local else None,
        recipe.path,
    )
    checkpoint = _check_output(
        out, resume=resume, overwrite=overwrite, inputs=[p for p in local_inputs if p]
    )

    formatter = recipe.formatter(registry)
    quantizer = recipe.quantizer(registry)
    method = recipe.peft_method(registry)
    t = recipe.training

    tokenizer = load_tokenizer(recipe.model, token=token)
    rows = load_rows(recipe.data, token=token)
    check_columns(rows, formatter, recipe.data.source)
    train_rows, eval_rows = split_eval(rows, recipe.data.eval_fraction, t.seed)
    train_set, dropped, truncated = _encode(train_rows, formatter, tokenizer, recipe)
    eval_set = _encode(eval_rows, formatter, tokenizer, recipe)[0] if eval_rows is not None else []
    if not train_set:
        raise DataError(
            f"none of the {len(train_rows)} training rows of {recipe.data.source} leaves a "
            f"completion token to train on (formatter '{formatter.name}', max_length = "
            f"{recipe.data.max_length}): `adaptool check` shows the examples."
        )
    reporter.info(
        f"data: {len(rows)} rows from {recipe.data.source} -> {len(train_set)} train, "
        f"{len(eval_set)} eval; {truncated} truncated to max_length = {recipe.data.max_length}"
        + (f"; {dropped} skipped (nothing left to train on)" if dropped else "")
    )

    torch.manual_seed(t.seed)
    random.seed(t.seed)
    precision = resolve_precision(t.precision)
    model = load_base(recipe.model, quantizer, precision=precision, token=token)
    base_info = _base_info(recipe, model, precision)
    checkpointing = _use_gradient_checkpointing(t.gradient_checkpointing, model, train_set, t)
    model = _prepare_for_training(model, quantized=quantizer.quantized, checkpointing=checkpointing)
    model = _wrap(model, method, recipe, init_adapter)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    reporter.info(
        f"trainable params: {trainable:,} || all params: {total_params:,} || "
        f"trainable%: {100 * trainable / total_params:.4f}"
    )

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    plan = BatchPlan([len(e.input_ids) for e in train_set], t.batch_size, t.seed, t.group_by_length)
    accumulation = t.gradient_accumulation_steps
    total_steps = t.max_steps or max(
        1, math.ceil(t.total_epochs * plan.batches_per_epoch / accumulation)
    )
    from transformers import get_scheduler

    schedule = t.lr_scheduler
    if schedule == "constant" and t.warmup_steps:
        schedule = "constant_with_warmup"  # transformers' "constant" ignores warmup
    scheduler = get_scheduler(
        schedule,
        optimizer,
        num_warmup_steps=min(t.warmup_steps, total_steps),
        num_training_steps=total_steps,
    )

    # everything loaded and checked: only now is the output dir touched
    _claim_output(out, checkpoint=checkpoint, overwrite=overwrite)
    step, records, tokens_seen = 0, [], 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
        step, tokens_seen = state["step"], state.get("tokens", 0)
        if state.get("total_steps") not in (None, total_steps):
            reporter.info(
                f"warning: the checkpoint's run had {state['total_steps']} steps, this recipe "
                f"has {total_steps}; the learning-rate schedule continues with {total_steps}"
            )
        records = [r for r in _read_metrics(out) if r["step"] <= step]
        reporter.info(f"resuming from {checkpoint} (step {step}/{total_steps})")
    _write_metrics(out, records)

    dev = device()
    autocast, scaler = _mixed_precision(precision, dev)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eval_every = t.eval_steps or t.save_steps or total_steps
    window_loss, window_tokens, window_real = 0.0, 0, 0
    if checkpoint is not None:
        window_loss, window_tokens, window_real = state.get("window", [0.0, 0, 0])
    window_start = time.monotonic()
    last_eval: float | None = _last(records, "eval_loss")
    reporter.start(total=total_steps, initial=step)
    with StopOnInterrupt(reporter) as stop:
        while step < total_steps and not stop.requested:
            model.train()
            group = [plan.batch_at(step * accumulation + k) for k in range(accumulation)]
            n_trained = sum(train_set[i].trained_tokens for batch in group for i in batch)
            for batch_rows in group:
                batch = collate([train_set[i] for i in batch_rows], pad_id)
                batch = {k: v.to(dev) for k, v in batch.items()}
                with autocast():
                    loss_sum = _loss_sum(model, batch)
                scaled = loss_sum / n_trained
                (scaler.scale(scaled) if scaler else scaled).backward()
                window_loss += loss_sum.item()
                window_real += int(batch["attention_mask"].sum())
            window_tokens += n_trained
            if scaler is not None:
                scaler.unscale_(optimizer)
            if t.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record: dict[str, Any] | None = None
            if step % t.logging_steps == 0 or step == total_steps:
                elapsed = max(time.monotonic() - window_start, 1e-9)
                tokens_seen += window_real
                record = {
                    "step": step,
                    "epoch": round(step * accumulation / plan.batches_per_epoch, 4),
                    "loss": window_loss / max(window_tokens, 1),
                    "lr": scheduler.get_last_lr()[0],
                    "tokens": tokens_seen,
                    "tokens_per_s": window_real / elapsed,
                }
                window_loss, window_tokens, window_real = 0.0, 0, 0
                window_start = time.monotonic()
            if eval_set and (step % eval_every == 0 or step == total_steps):
                last_eval = evaluate_loss(model, eval_set, t.batch_size, pad_id)
                record = (record or {"step": step}) | {"eval_loss": last_eval}
            if record is not None:
                records.append(record)
                _append_metrics(out, record)
                reporter.log(record)
            at_save = t.save_steps and step % t.save_steps == 0
            if step < total_steps and (at_save or stop.requested):
                save_checkpoint(
                    out,
                    step=step,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    rng_state=capture_rng(),
                    extra={
                        "tokens": tokens_seen,
                        "total_steps": total_steps,
                        # the open logging window, so the next logged record matches an
                        # uninterrupted run's
                        "window": [window_loss, window_tokens, window_real],
                    },
                )
        interrupted = stop.requested and step < total_steps
    reporter.finish()

    result = TrainResult(
        output_dir=out,
        step=step,
        total_steps=total_steps,
        interrupted=interrupted,
        train_loss=_last(records, "loss"),
        eval_loss=last_eval,
        tokens=tokens_seen,
        wall_time=time.monotonic() - started,
    )
    if interrupted:
        return result
    del optimizer, scheduler
    model.zero_grad(set_to_none=True)
    release_memory()  # the training step's freed buffers go back before saving and plotting
    model.config.use_cache = True
    result.manifest = _manifest(
        recipe,
        result,
        base_info=base_info,
        quantizer=quantizer,
        method=method,
        formatter=formatter,
        rows=rows,
        train_set=train_set,
        eval_set=eval_set,
        truncated=truncated,
        dropped=dropped,
        trainable=trainable,
        total_params=total_params,
        checkpointing=checkpointing,
        init_adapter=init_adapter,
        precision=precision,
    )
    _write_final(out, model, tokenizer, recipe, records, result.manifest)
    return result


# -- pieces -----------------------------------------------------------------------------------


class StopOnInterrupt:
    """Ctrl-C (SIGINT) asks the loop to stop after the current optimizer step, which is then
    checkpointed; a second Ctrl-C stops at once. Outside the main thread it does nothing."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
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


def _check_output(out: Path, *, resume: bool, overwrite: bool, inputs: list) -> Path | None:
    """Refuse to clobber an existing result or an input (touching nothing); return the
    checkpoint to resume from."""
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise AdaptoolError(
                f"--resume: {out} holds no checkpoint to resume from (a run writes one every "
                f"training.save_steps and on Ctrl-C)."
            )
        return checkpoint
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExists(
            f"the output directory {out} already exists and is not empty. Use --resume to "
            f"continue its run, --overwrite to replace it, or --output DIR for another one."
        )
    check_output(out, overwrite=overwrite, inputs=inputs)
    return None


def _claim_output(out: Path, *, checkpoint: Path | None, overwrite: bool) -> None:
    """Make the output dir ours: on resume the old result stops counting as complete (its
    manifest goes until the end); with --overwrite the old contents go."""
    if checkpoint is not None:
        (out / MANIFEST).unlink(missing_ok=True)
        return
    if overwrite and out.exists():
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _encode(rows: Any, formatter: Any, tokenizer: Any, recipe: Recipe) -> tuple[list, int, int]:
    encoded = encode_rows(rows, formatter, tokenizer, recipe.data)
    kept = [e for e in encoded if e.trained_tokens > 0]
    return kept, len(encoded) - len(kept), sum(e.truncated for e in encoded)


def _use_gradient_checkpointing(
    setting: bool | str, model: Any, data: list[Encoded], t: Any
) -> bool:
    """``auto``: on only when the activations of one micro-batch would not fit comfortably in
    the memory left after loading the model."""
    if isinstance(setting, bool):
        return setting
    import torch

    config = model.config
    hidden = getattr(config, "hidden_size", 1024)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 24)
    longest = max(len(e.input_ids) for e in data)
    tokens = t.batch_size * longest
    element = 2 if str(model.dtype) in ("torch.bfloat16", "torch.float16") else 4
    need = tokens * (hidden * layers * 34 * element + getattr(config, "vocab_size", 0) * 4 * 2)
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
    else:
        import psutil

        free = psutil.virtual_memory().available
    return need > 0.5 * free


def _prepare_for_training(model: Any, *, quantized: bool, checkpointing: bool) -> Any:
    """Freeze the base; gradient checkpointing when asked. A k-bit base in fp16 or fp32 goes
    through peft's k-bit preparation, which also upcasts its non-quantized weights to fp32 (fp16
    norms and heads are not stable to train through); a bf16 one is left in bf16, which is
    stable, and is where its (de)quantized matmuls run at bf16 speed."""
    import torch

    kwargs = {"use_reentrant": False}
    if quantized and model.dtype != torch.bfloat16:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=kwargs
        )
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def _wrap(model: Any, method: Any, recipe: Recipe, init_adapter: str | Path | None) -> Any:
    from peft import PeftModel, get_peft_model

    if init_adapter is None:
        return get_peft_model(model, method.peft_config(recipe.peft))
    folder = Path(init_adapter)
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except Exception as exc:
        raise AdapterError(
            f"--init-adapter {folder} does not fit the base {recipe.model.name}: {describe(exc)}"
        ) from None


def _mixed_precision(precision: str, dev: str) -> tuple[Any, Any]:
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


def _loss_sum(model: Any, batch: dict[str, Any]) -> Any:
    """Summed cross-entropy over the trained (label != IGNORE_INDEX) next tokens."""
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def evaluate_loss(model: Any, data: list[Encoded], batch_size: int, pad_id: int) -> float:
    """Mean loss per trained token over ``data`` (no dropout, no gradients)."""
    import torch

    model.eval()
    dev = device()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            chunk = data[start : start + batch_size]
            batch = {k: v.to(dev) for k, v in collate(chunk, pad_id).items()}
            total += _loss_sum(model, batch).item()
            count += sum(e.trained_tokens for e in chunk)
    model.train()
    return total / max(count, 1)


def _last(records: list[dict[str, Any]], key: str) -> float | None:
    for record in reversed(records):
        if key in record:
            return record[key]
    return None


def _read_metrics(out: Path) -> list[dict[str, Any]]:
    path = out / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _write_metrics(out: Path, records: list[dict[str, Any]]) -> None:
    tmp = out / f".{METRICS}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, out / METRICS)


def _append_metrics(out: Path, record: dict[str, Any]) -> None:
    with (out / METRICS).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _base_info(recipe: Recipe, model: Any, precision: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": recipe.model.name,
        "revision": recipe.model.revision,
        "dtype": str(weights_dtype(recipe.model, precision)).removeprefix("torch."),
    }
    if recipe.model.is_local:
        info["content_hash"] = content_hash(Path(recipe.model.name))
    else:
        info["commit"] = getattr(model.config, "_commit_hash", None)
    info["model_type"] = getattr(model.config, "model_type", None)
    return info


def _manifest(recipe: Recipe, result: TrainResult, **kw: Any) -> dict[str, Any]:
    formatter, quantizer, method = kw["formatter"], kw["quantizer"], kw["method"]
    t = recipe.training
    return {
        "format": 1,
        "kind": "adapter",
        "created": now(),
        "base_model": kw["base_info"],
        "quantization": quantizer.describe() | {"version": quantizer.version},
        "peft": {
            "method": method.name,
            "version": method.version,
            **recipe.peft.model_dump(exclude={"options", "method"}),
            "options": recipe.peft.options,
            "trainable_params": kw["trainable"],
            "total_params": kw["total_params"],
            "init_adapter": str(kw["init_adapter"]) if kw["init_adapter"] else None,
        },
        "data": {
            "source": recipe.data.source,
            "split": recipe.data.split,
            "fingerprint": getattr(kw["rows"], "_fingerprint", None),
            "rows": len(kw["rows"]),
            "train_rows": len(kw["train_set"]),
            "eval_rows": len(kw["eval_set"]),
            "truncated": kw["truncated"],
            "skipped": kw["dropped"],
            "eval_fraction": recipe.data.eval_fraction,
            "max_length": recipe.data.max_length,
            "train_on_prompt": recipe.data.train_on_prompt,
        },
        "formatter": {
            "name": formatter.name,
            "version": formatter.version,
            "options": recipe.data.options,
        },
        "training": t.model_dump()
        | {
            "steps": result.step,
            "total_steps": result.total_steps,
            "device": device(),
            "gradient_checkpointing_used": kw["checkpointing"],
            "precision_used": kw["precision"],
        },
        "seed": t.seed,
        "libraries": library_versions(),
        "recipe": {
            "path": str(recipe.path) if recipe.path else None,
            "git": git_info(recipe.path) if recipe.path else None,
        },
        "results": {
            "train_loss": result.train_loss,
            "eval_loss": result.eval_loss,
            "tokens": result.tokens,
            "wall_time_s": round(result.wall_time, 2),
        },
    }


def _write_final(
    out: Path,
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    records: list[dict[str, Any]],
    manifest: dict[str, Any],
) -> None:
    """Everything is written to a temporary folder first, then moved in; the manifest goes
    last, so a folder with ``adaptool.json`` always holds a complete result."""
    from adaptool.card import model_card
    from adaptool.plot import plot_losses

    tmp = out / FINAL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "recipe.toml").write_text(recipe.to_toml(), encoding="utf-8")
    plot_losses(
        records,
        tmp / "loss.png",
        title=f"{Path(recipe.model.name).name} + "
        f"{recipe.peft.method} ({recipe.quantization.backend})",
    )
    # our card in place of peft's empty template; `adaptool push` writes it anew for the repo
    name = (recipe.hub.repo_id if recipe.hub else None) or str(out)
    card = model_card(tmp, repo_id=name, manifest=manifest)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    for path in sorted(tmp.iterdir()):
        os.replace(path, out / path.name)
    tmp.rmdir()
    write_json(out / MANIFEST, manifest)
    store.record_output(out, manifest, "trained")
