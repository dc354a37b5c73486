"""Setting a training run up: the recipe's data formatted and tokenized, the base loaded
through its quantizer and wrapped with the PEFT method, the optimizer and schedule built —
everything :func:`~adaptool.training.fit.fit` needs, before the output dir is touched."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptool.artifacts.fit import trainable_parameters
from adaptool.artifacts.loading import attach
from adaptool.artifacts.manifest import BaseModelRecord, content_hash
from adaptool.base import RunInfo, peft_type_name
from adaptool.distributed import World, from_main, main_first, start
from adaptool.errors import AdaptoolError, ModelError, describe, param
from adaptool.modeling import (
    device,
    free_memory,
    load_base,
    load_tokenizer,
    resolve_precision,
    weights_dtype,
)
from adaptool.sharding import held_by_this_process
from adaptool.training.batching import BatchPlan, PlannedFeed
from adaptool.training.checkpoint import load_adapter, read_state
from adaptool.training.loss import head_for_loss
from adaptool.training.sources import Data, load_data
from adaptool.training.speed import (
    Compiled,
    compile_blocks,
    fuse_activations,
    half_precision_lora,
    micro_batch_tokens,
)

if TYPE_CHECKING:
    from adaptool.base import PeftMethod
    from adaptool.recipe.resolve import RecipePlugins
    from adaptool.recipe.schema import Recipe
    from adaptool.training.progress import Reporter


@dataclass
class Session:
    """A run set up: plugins, data, the wrapped model, optimizer, schedule and batch plan."""

    recipe: Recipe
    plugins: RecipePlugins
    tokenizer: Any
    data: Data
    model: Any
    base: BaseModelRecord
    precision: str
    checkpointing: bool
    params: list[Any]
    optimizer: Any
    scheduler: Any
    #: the micro-batches in training order (a planned table, or a stream)
    feed: Any
    total_steps: int
    trainable: int
    total_params: int
    init_adapter: Path | None
    #: what the PEFT method was told about the run
    run: RunInfo | None = None
    #: where the adapter as initialised is kept, when the method converts at save (PiSSA)
    initial: Path | None = None
    #: this process's place among the training processes (a world of one by default)
    world: World = field(default_factory=World)
    #: the model as the loop runs it: ``model`` itself (sharded in place under FSDP), or
    #: DDP-wrapped across processes
    runner: Any = None
    #: micro-batches packed into one sequence: always (True), where it costs no more
    #: attention ("auto"), never (False) — training.packing resolved for the model
    packing: bool | str = False
    #: the model's output layer when the loss is taken on it in chunks (None: from logits)
    head: Any = None
    #: the most tokens a micro-batch takes (the step's rows merged up to it); 0: the plan's
    #: micro-batches of batch_size rows
    micro_batch_tokens: int = 0
    #: what training.compile did
    compiled: Compiled = field(default_factory=Compiled)


def setup(
    recipe: Recipe,
    plugins: RecipePlugins,
    *,
    init_adapter: Path | None,
    reporter: Reporter,
    world: World | None = None,
    checkpoint: Path | None = None,
) -> Session:
    """Everything a run needs, loaded and checked; nothing written. Resuming
    ``checkpoint``, its adapter is loaded; the rest of its state is for the caller
    (:func:`~adaptool.training.checkpoint.restore_training`)."""
    import torch
    from transformers import get_scheduler

    t = recipe.training
    model_section = recipe.model
    tokenizer = load_tokenizer(
        model_section.name,
        revision=model_section.revision,
        trust_remote_code=model_section.trust_remote_code,
    )
    formatters = plugins.source_formatters or (plugins.formatter,)
    world = world or World()
    accelerator = start(world, recipe.distributed)
    sharded = accelerator is not None and recipe.distributed.strategy == "fsdp"
    # FSDP splits floating-point weights: a quantizer stores its packed ones so
    quantizer = plugins.quantizer.for_sharding() if sharded else plugins.quantizer
    with main_first(world):  # the main process tokenizes into the cache, the others read it
        data = load_data(recipe, formatters, tokenizer, reporter)

    torch.manual_seed(t.seed)
    random.seed(t.seed)
    precision = resolve_precision(t.precision)
    model = load_base(
        model_section.name,
        quantizer,
        revision=model_section.revision,
        dtype=model_section.dtype,
        precision=precision,
        trust_remote_code=model_section.trust_remote_code,
        # FSDP takes an unquantized base from the CPU, each process its shard to its GPU (a
        # whole one may not fit one GPU); a 4-bit one is quantized onto each GPU (it fits)
        on_gpu=not sharded or quantizer.quantized,
    )
    base = _base_record(recipe, model, precision)
    checkpointing = _use_gradient_checkpointing(
        t.gradient_checkpointing,
        model,
        data,
        t,
        quantized=plugins.quantizer.quantized,
        method=plugins.method,
    )
    model = _prepare_for_training(
        model, quantized=plugins.quantizer.quantized, checkpointing=checkpointing
    )
    feed, total_steps = _feed(data, t, world)
    run = RunInfo(
        total_steps=total_steps,
        quantized=plugins.quantizer.quantized,
        learning_rate=t.learning_rate,
        tokenizer=model_section.name,
        batches=lambda: _first_batches(feed, tokenizer, model.device, rows=t.batch_size),
    )
    model = _wrap(model, plugins.method, recipe, init_adapter, run)
    if checkpoint is not None:  # a resume: the adapter as it was, before any sharding
        load_adapter(checkpoint, model=model, method=plugins.method)
    if world.distributed:  # the same initial adapter everywhere, each process its own dropout
        torch.manual_seed(t.seed + world.rank)
    packing = _use_packing(t.packing, model, reporter)
    fused = fuse_activations(model)
    if fused:
        reporter.info(f"activations: {', '.join(fused)} computed by torch's fused GELU (tanh)")
    if not sharded and half_precision_lora(model):
        reporter.info(f"lora: the low-rank path computed in {model.dtype}, the adapter kept fp32")
    # the loss on the LM head in chunks, and micro-batches as large as memory allows
    # (measured on the model as it will train, before FSDP splits it)
    head = None if sharded else head_for_loss(model)
    model.train()  # measured, timed and compiled as it trains (dropout on)
    probe = functools.cache(
        lambda: _first_batches(feed, tokenizer, model.device, rows=t.batch_size, count=1)[0]
    )
    # a resume runs as the checkpoint's run did: its rows cut alike (run.py), compiled or not
    saved = read_state(checkpoint) if checkpoint is not None else None
    compiling = t.compile if saved is None else saved.get("compiled", t.compile)
    with _as_trained(precision):
        budget = micro_batch_tokens(
            0 if sharded else t.micro_batch_tokens, model, probe, head=head, reporter=reporter
        )
        if packing is True and model.config._attn_implementation not in VARLEN_ATTENTION:
            # one sequence a micro-batch, attending over its square: no longer than packing
            # batch_size rows made it before micro-batches were merged
            budget = min(budget, t.batch_size * recipe.data.max_length) if budget else 0
        compiled = compile_blocks(
            compiling,
            model,
            probe,
            head=head,
            sharded=sharded,
            run_tokens=total_steps * t.batch_size * t.gradient_accumulation_steps * _mean_row(data),
            reporter=reporter,
        )
    if world.distributed:  # every process cuts its rows alike
        budget = from_main(budget)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    reporter.info(
        f"trainable params: {trainable:,} || all params: {total_params:,} || "
        f"trainable%: {100 * trainable / total_params:.4f}"
    )

    if sharded:  # split between the processes; the optimizer is built on the shards
        model = _shard(accelerator, model, plugins)
        held, stored = held_by_this_process(model)
        reporter.info(
            f"fsdp: the model is split between {world.size} processes; this one holds "
            f"{100 * held / stored:.1f}% of its weights ({held:,} of {stored:,} as stored)"
        )
    groups = plugins.method.param_groups(model, t.learning_rate)
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, weight_decay=t.weight_decay)
    schedule = t.lr_scheduler
    if schedule == "constant" and t.warmup_steps:
        schedule = "constant_with_warmup"  # transformers' "constant" ignores warmup
    scheduler = get_scheduler(
        schedule,
        optimizer,
        num_warmup_steps=min(t.warmup_steps, total_steps),
        num_training_steps=total_steps,
    )
    return Session(
        recipe=recipe,
        plugins=plugins,
        tokenizer=tokenizer,
        data=data,
        model=model,
        base=base,
        precision=precision,
        checkpointing=checkpointing,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        feed=feed,
        total_steps=total_steps,
        trainable=trainable,
        total_params=total_params,
        init_adapter=init_adapter,
        run=run,
        packing=packing,
        head=head,
        micro_batch_tokens=budget,
        compiled=compiled,
        world=world,
        runner=_parallel(accelerator, model) if accelerator and not sharded else model,
    )


def _shard(accelerator: Any, model: Any, plugins: RecipePlugins) -> Any:
    """The model sharded by FSDP, when the recipe lets it be."""
    from adaptool.sharding import refusals, shard

    refused = refusals(plugins, model)
    if refused:
        raise AdaptoolError(
            'distributed.strategy = "fsdp" cannot train this recipe: '
            + "; ".join(refused)
            + '. Use strategy = "ddp" (each process holds the whole model).'
        )
    return shard(accelerator, model)


def _parallel(accelerator: Any, model: Any) -> Any:
    """The model wrapped for data parallelism (DDP) by accelerate. The frozen base is left
    out of DDP's start-up broadcast (every process loaded the same weights: a 7B base would
    otherwise cross the wire whole)."""
    model._ddp_params_and_buffers_to_ignore = [
        name for name, p in model.named_parameters() if not p.requires_grad
    ]
    return accelerator.prepare_model(model)


#: training batches a data-driven initialisation (EVA) sees
INIT_BATCHES = 8


def _first_batches(
    feed: Any,
    tokenizer: Any,
    dev: Any,
    *,
    rows: int,
    count: int = INIT_BATCHES,
) -> list[dict]:
    """The run's first ``count`` micro-batches of ``rows`` rows, collated and on the model's
    device ``dev``: an epoch's rows at most."""
    from adaptool.training.batching import collate

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_epoch = feed.plan.batches_per_epoch if isinstance(feed, PlannedFeed) else count
    chunks = []
    for k in range(min(count, per_epoch)):
        batch = feed.batch(k)
        chunks += [batch[i : i + rows] for i in range(0, len(batch), rows)]
        if len(chunks) >= count:
            break
    batches = [collate(chunk, pad) for chunk in chunks[:count]]
    return [{k: v.to(dev) for k, v in batch.items()} for batch in batches]


def _feed(data: Data, t: Any, world: World) -> tuple[Any, int]:
    """The training batches in order, each an optimizer step's rows (every process's:
    batch_size x gradient_accumulation_steps x world size), length-grouped together; and
    the run's steps."""
    rows = t.batch_size * t.gradient_accumulation_steps * world.size
    if data.stream is not None:  # no length: the recipe gives max_steps
        data.stream.batch_size = rows
        return data.stream, t.max_steps
    plan = BatchPlan(data.train_set.lengths, rows, t.seed, t.group_by_length)
    total = t.max_steps or max(1, math.ceil(t.total_epochs * plan.batches_per_epoch))
    return PlannedFeed(plan, data.train_set), total


def _as_trained(precision: str) -> Any:
    """What the setup's probes of the model run under: the loop's autocast on a GPU."""
    import contextlib

    from adaptool.training.fit import mixed_precision

    dev = device()
    return mixed_precision(precision, dev)[0]() if dev == "cuda" else contextlib.nullcontext()


def _mean_row(data: Data) -> float:
    """The mean training row's tokens (a stream's: of the rows read ahead)."""
    lengths = data.train_set.lengths
    return float(lengths.mean()) if len(lengths) else 0.0


def _base_record(recipe: Recipe, model: Any, precision: str) -> BaseModelRecord:
    local = recipe.model.is_local
    return BaseModelRecord(
        name=recipe.model.name,
        revision=recipe.model.revision,
        dtype=str(weights_dtype(recipe.model.dtype, precision)).removeprefix("torch."),
        content_hash=content_hash(Path(recipe.model.name)) if local else None,
        commit=None if local else getattr(model.config, "_commit_hash", None),
        model_type=getattr(model.config, "model_type", None),
    )


#: peft's methods that refuse a gradient-checkpointed base (their prefixes ride in the cache)
UNCHECKPOINTABLE = ("PREFIX_TUNING", "CARTRIDGE")


def _use_gradient_checkpointing(
    setting: bool | str, model: Any, data: Data, t: Any, *, quantized: bool, method: Any
) -> bool:
    """``auto``: on for a quantized base — memory is what quantizing it was for (peft's k-bit
    preparation turns it on too; measured on the 8-bit benchmark: peak RSS 0.97x the
    notebook's instead of 1.07x, at 0.7x the speed) unless the method cannot take it — and
    where the activations of one micro-batch would not fit comfortably in the memory left
    after loading the model."""
    if isinstance(setting, bool):
        return setting
    if peft_type_name(method.peft_type) in UNCHECKPOINTABLE:
        return False
    if quantized:
        return True

    config = model.config
    hidden = getattr(config, "hidden_size", 1024)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 24)
    # a stream's rows are not known ahead: the longest a row may be
    stream = data.stream
    longest = int(data.train_set.lengths.max()) if stream is None else stream.source.max_length
    tokens = t.batch_size * longest
    element = 2 if str(model.dtype) in ("torch.bfloat16", "torch.float16") else 4
    need = tokens * (hidden * layers * 34 * element + getattr(config, "vocab_size", 0) * 4 * 2)
    return need > 0.5 * free_memory()


def _use_packing(setting: bool | str, model: Any, reporter: Reporter) -> bool | str:
    """``True``: every micro-batch packed (refused, naming why, where packing is not exact);
    ``"auto"``: where it is exact, each micro-batch packed when that costs no more attention
    than padding (always, with a variable-length attention that never builds the mask);
    ``False``: padded."""
    from adaptool.modeling import packing_refused

    if setting is False:
        return False
    why = packing_refused(model)
    if why is not None and setting is True:
        raise ModelError(
            f"training.packing = true, but packing is not exact here: {why}. Set "
            f'training.packing = "auto" (packs where it is exact) or false.'
        )
    if why is not None:
        return False
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if setting is True or attention in VARLEN_ATTENTION:
        reporter.info("packing: each micro-batch is one sequence, attention kept within rows")
        return True
    reporter.info("packing: micro-batches of rows of mixed lengths packed into one sequence")
    return "auto"


#: attention implementations that take packed rows as variable-length sequences (no T² mask)
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention")


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


def _wrap(
    model: Any, method: PeftMethod, recipe: Recipe, init_adapter: Path | None, run: RunInfo
) -> Any:
    """The base wrapped by peft with the recipe's method (or the adapter ``init_adapter``),
    checked to save a config plain peft loads back."""
    from peft import get_peft_model

    if init_adapter is not None:
        _check_same_method(init_adapter, method)
        hint = f"Give {param('init_adapter', 'DIR')} an adapter trained on model.name."
        return attach(model, init_adapter, recipe.model.name, trainable=True, hint=hint)
    config = peft_config_for(method, recipe, run)
    _check_adapter_fits_in_memory(model.config, config, method, recipe)
    try:
        wrapped = get_peft_model(model, config)
    except (ValueError, TypeError, RuntimeError, KeyError) as exc:
        raise cannot_apply(method, recipe, exc) from None
    method.after_wrap(wrapped, run)
    _check_config_reloads(wrapped, method)
    return wrapped


def _check_same_method(init_adapter: Path, method: PeftMethod) -> None:
    """The recipe's method drives the loop (its per-step work, parameter groups, saving):
    an adapter to start from must be one of that method."""
    import json

    from adaptool.artifacts.layout import ADAPTER_CONFIG

    config = json.loads((init_adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    found = peft_type_name(config.get("peft_type"))
    if method.peft_type and found != peft_type_name(method.peft_type):
        raise ModelError(
            f"{param('init_adapter', 'DIR')}: {init_adapter} is a {found} adapter, but the recipe "
            f"trains with {method.title()} (peft.method = '{method.name}'); set peft.method to "
            f"the adapter's method."
        )


def peft_config_for(method: PeftMethod, recipe: Recipe, run: RunInfo) -> Any:
    """The method's peft config for the recipe; a combination of settings peft refuses is a
    ModelError naming the method and peft's reason (not a crash)."""
    try:
        return method.peft_config(recipe.peft, run)
    except (ValueError, TypeError, KeyError) as exc:
        raise cannot_apply(method, recipe, exc) from None


def cannot_apply(method: PeftMethod, recipe: Recipe, exc: BaseException) -> ModelError:
    return ModelError(
        f"peft cannot apply the {method.title()} method ('{method.name}') to "
        f"{recipe.model.name} with these settings: {describe(exc).rstrip('.')}. Check the [peft] "
        f"section (target_modules names the layers to adapt)."
    )


def _check_config_reloads(model: Any, method: PeftMethod) -> None:
    """The config the adapter will be saved with must be one peft loads back: a method whose
    saved config peft would refuse (as peft 0.21 refuses IA3's own ``all-linear`` config)
    is stopped before training rather than found out at ``generate``."""
    import tempfile

    from peft import PeftConfig

    config = model.peft_config["default"]
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        try:
            PeftConfig.from_pretrained(tmp)
        except Exception as exc:
            raise ModelError(
                f"the {method.title()} method ('{method.name}') would save a config peft "
                f"cannot load back ({describe(exc)}); this is a bug in the method plugin "
                f"'{method.name}'."
            ) from None


#: bytes per trainable parameter: fp32 weight, gradient and AdamW's two moments
BYTES_PER_TRAINABLE = 16


def _check_adapter_fits_in_memory(
    base_config: Any, peft_config: Any, method: PeftMethod, recipe: Recipe
) -> None:
    """Count the adapter's parameters on the meta device and refuse one whose weights,
    gradients and optimizer state could not fit in the memory free now (``r = 10**5`` on a
    7B model asks for terabytes) — before any of it is allocated."""
    import copy

    config = copy.deepcopy(base_config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    try:
        params = trainable_parameters(config, peft_config)
    except (
        ValueError,
        TypeError,
        RuntimeError,
        KeyError,
    ) as exc:  # target_modules that match nothing
        raise cannot_apply(method, recipe, exc) from None
    need = params * BYTES_PER_TRAINABLE
    free = free_memory()
    if need > free:
        raise ModelError(
            f"the adapter the recipe asks for has {params:,} trainable parameters: "
            f"{need / 2**30:.1f} GiB with their gradients and optimizer state, more than the "
            f"{free / 2**30:.1f} GiB free. Lower peft.r or target fewer modules."
        )
