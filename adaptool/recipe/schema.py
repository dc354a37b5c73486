"""What a recipe is: its sections, typed as TOML is typed, and :class:`Recipe` — plain data
(validated, paths resolved). Three sections name a plugin (``quantization.backend``,
``peft.method``, ``data.formatter``); their other keys are that plugin's options."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

#: bounds on what a recipe may ask for: beyond them a value is a typo, not a setting (a rank
#: of a million allocates terabytes; a learning rate of 1e6 trains to NaN)
MAX_RANK = 65_536
MAX_LENGTH = 1_048_576
MAX_BATCH = 65_536
MAX_STEPS = 10**9
MAX_EPOCHS = 100_000
MAX_LEARNING_RATE = 10.0


def _printable_path(value: str) -> str:
    """A path or Hub id: no NUL or other control character (no file system or Hub has one)."""
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"a path or Hub id without control characters, found {value!r}")
    return value


PathText = Annotated[str, AfterValidator(_printable_path)]


class Section(BaseModel):
    """A recipe section: typed as TOML is typed, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    #: For plugin sections: (key naming the plugin, plugin kind).
    plugin_key: ClassVar[tuple[str, str] | None] = None
    #: For sections of several plugins of one kind, each with a ``[section.<name>]`` table of
    #: options: the kind.
    plugin_tables: ClassVar[str | None] = None

    @classmethod
    def cross_key_problems(cls, values: Mapping[str, Any]) -> list[str]:
        """Rules across keys, checked on the raw values so they are reported together with
        every per-key problem."""
        return []


class ModelSection(Section):
    name: PathText = Field(min_length=1, description="Hub model id or local path")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False

    @property
    def is_local(self) -> bool:
        return Path(self.name).is_absolute()


class QuantizationSection(Section):
    plugin_key: ClassVar[tuple[str, str] | None] = ("backend", "quantizer")
    backend: str = "none"
    options: dict[str, Any] = Field(default_factory=dict)


class PeftSection(Section):
    plugin_key: ClassVar[tuple[str, str] | None] = ("method", "peft-method")
    method: str = "lora"
    r: int = Field(default=8, gt=0, le=MAX_RANK)
    alpha: float = Field(default=16.0, gt=0, allow_inf_nan=False)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: Literal["auto", "all-linear"] | list[str] = "auto"
    options: dict[str, Any] = Field(default_factory=dict)


class DataSection(Section):
    plugin_key: ClassVar[tuple[str, str] | None] = ("formatter", "formatter")
    source: PathText = Field(min_length=1, description="Hub dataset id or local file")
    split: str = "train"
    #: a Hub dataset's config name (gsm8k needs "main") and revision (branch, tag or commit;
    #: the commit it resolves to is pinned in the manifest)
    config: str | None = Field(default=None, min_length=1)
    revision: str | None = Field(default=None, min_length=1)
    formatter: str
    eval_fraction: float = Field(default=0.0, ge=0, lt=1)
    max_length: int = Field(default=512, gt=0, le=MAX_LENGTH)
    train_on_prompt: bool = False
    on_bad_row: Literal["error", "skip"] = Field(
        default="error", description="a null or wrongly typed field: stop, or skip the row"
    )
    #: read the source as training consumes it (a Hub dataset or file larger than memory or
    #: disk): shuffled in a bounded buffer, tokenized on the fly, nothing cached; needs
    #: training.max_steps, no eval split, and is the recipe's only source
    streaming: bool = False
    #: in a mixture, this source's sampling probability (relative to the others')
    weight: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: several sources: ``[[data.sources]]`` tables, each a source with its own formatter,
    #: options, split and eval fraction (the keys of ``[data]`` are their defaults); the
    #: section's own source and formatter are then the first one's
    sources: list[DataSection] = Field(default_factory=list)
    #: how several sources make the training set: all rows of each, or sampled by weight
    mix: Literal["concatenate", "weights"] = "concatenate"
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_absolute()

    @property
    def all_sources(self) -> list[DataSection]:
        """Every source of the recipe (this section itself when it has no ``sources``)."""
        return list(self.sources) or [self]


#: the [data] keys every [[data.sources]] table takes as its default
SHARED_KEYS = ("split", "eval_fraction", "max_length", "train_on_prompt", "on_bad_row")


class TrainingSection(Section):
    batch_size: int = Field(default=4, gt=0, le=MAX_BATCH)
    gradient_accumulation_steps: int = Field(default=1, gt=0, le=MAX_BATCH)
    learning_rate: float = Field(default=2e-4, gt=0, le=MAX_LEARNING_RATE, allow_inf_nan=False)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    max_grad_norm: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    max_steps: int | None = Field(default=None, gt=0, le=MAX_STEPS)
    epochs: float | None = Field(default=None, gt=0, le=MAX_EPOCHS, allow_inf_nan=False)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 where the hardware computes it natively"
    )
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    logging_steps: int = Field(default=10, gt=0, le=MAX_STEPS)
    save_steps: int = Field(
        default=100, ge=0, le=MAX_STEPS, description="0: no intermediate checkpoints"
    )
    eval_steps: int = Field(
        default=0, ge=0, le=MAX_STEPS, description="0: at every save and at the end"
    )
    group_by_length: bool = True
    compile: bool | Literal["auto"] = Field(
        default="auto",
        description="torch.compile each transformer block (compiled kernels cached across "
        "runs); auto: where a compiler is there and the run is long enough for it to pay",
    )
    micro_batch_tokens: Annotated[int, Field(ge=0, le=MAX_LENGTH * MAX_BATCH)] | Literal["auto"] = (
        Field(
            default="auto",
            description="the most tokens one forward pass takes: an optimizer step's rows "
            "(batch_size x gradient_accumulation_steps) are merged into as few micro-batches of "
            "at most this many tokens as they fit (the step is the same); auto: as many as the "
            "memory free at the start allows, measured; 0: micro-batches of batch_size rows",
        )
    )
    packing: bool | Literal["auto"] = Field(
        default="auto",
        description="each micro-batch's rows as one sequence, attention kept within each row "
        "(no padding); auto: on where that is exact for the model",
    )

    @classmethod
    def cross_key_problems(cls, values: Mapping[str, Any]) -> list[str]:
        if values.get("max_steps") is not None and values.get("epochs") is not None:
            return ["set max_steps or epochs, not both"]
        return []

    @model_validator(mode="after")
    def _cross_keys(self) -> TrainingSection:
        for problem in self.cross_key_problems(self.model_dump()):
            raise ValueError(problem)
        return self

    @property
    def total_epochs(self) -> float | None:
        """Epochs to run when ``max_steps`` is not set (default: one)."""
        return None if self.max_steps is not None else (self.epochs or 1.0)


class LoggingSection(Section):
    """``to``: the loggers (trackers) a run logs to besides ``metrics.jsonl``; a
    ``[logging.<name>]`` table holds one logger's options."""

    plugin_tables: ClassVar[str | None] = "logger"
    to: list[str] = Field(default_factory=list, description="loggers: tensorboard, ...")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class CallbacksSection(Section):
    """Each ``[callbacks.<name>]`` table turns the callback ``name`` on, with its options."""

    plugin_tables: ClassVar[str | None] = "callback"
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class OutputSection(Section):
    dir: PathText = Field(min_length=1)


class DistributedSection(Section):
    """How several training processes share the work (``adaptool train --nproc N``, or
    torchrun / accelerate launch). Handed to accelerate's own plugins."""

    #: ddp: each process holds the whole model, gradients averaged; fsdp: parameters,
    #: gradients and optimizer state sharded across GPUs; deepspeed: ZeRO
    strategy: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    #: fsdp: shard each transformer block (``transformer``), or by parameter count
    auto_wrap: Literal["transformer", "size"] = "transformer"
    #: fsdp, auto_wrap = "size": the parameters a module needs to become a unit of its own
    min_num_params: int = Field(default=100_000_000, ge=1)
    #: fsdp: keep sharded parameters in CPU memory between uses (GPUs)
    cpu_offload: bool = False
    #: deepspeed: the ZeRO stage (1 optimizer state, 2 + gradients, 3 + parameters)
    zero_stage: int = Field(default=2, ge=0, le=3)


class HubSection(Section):
    repo_id: str | None = Field(None, description="where `adaptool push` puts the adapter")
    private: bool = True
    revision: str | None = Field(None, description="branch to push to (default main)")
    license: str | None = Field(None, description="license id for the model card, e.g. mit")


def _without_none(data: Mapping[str, Any]) -> dict[str, Any]:
    """TOML has no null: unset keys (and tables' unset keys) are left out."""
    return {
        k: _without_none(v) if isinstance(v, Mapping) else v
        for k, v in data.items()
        if v is not None
    }


SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection,
    "quantization": QuantizationSection,
    "peft": PeftSection,
    "data": DataSection,
    "training": TrainingSection,
    "output": OutputSection,
    "hub": HubSection,
    "logging": LoggingSection,
    "callbacks": CallbacksSection,
    "distributed": DistributedSection,
}
REQUIRED_SECTIONS = ("model", "data", "output")


class Recipe(BaseModel):
    """A validated recipe with paths resolved. Plugin options are the chosen plugin's
    validated options (defaults filled in)."""

    model_config = ConfigDict(frozen=True)

    model: ModelSection
    quantization: QuantizationSection = QuantizationSection()
    peft: PeftSection = PeftSection()
    data: DataSection
    training: TrainingSection = TrainingSection()
    output: OutputSection
    hub: HubSection | None = None
    logging: LoggingSection = LoggingSection()
    callbacks: CallbacksSection = CallbacksSection()
    distributed: DistributedSection = DistributedSection()
    path: Path | None = None

    # -- serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The recipe as TOML-ready nested dicts: plugin options inline, no None values."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            if section is None or (name == "distributed" and section == DistributedSection()):
                continue
            # [peft]: only the common keys the recipe set (a method reads the others from its own
            # defaults, so a written default would change what a re-run trains, or be refused)
            single = name == "data" and not section.sources  # no mixture: no mix keys
            data = section.model_dump(
                exclude={"options", "sources"} | ({"mix", "weight"} if single else set()),
                exclude_unset=name == "peft",
            )
            data.update(getattr(section, "options", {}))
            if getattr(section, "sources", None):  # the shared keys, the mix, each source
                data = {k: data[k] for k in SHARED_KEYS if k in data} | {"mix": data["mix"]}
                data["sources"] = [
                    _without_none(
                        s.model_dump(exclude={"options", "sources", "mix"}) | dict(s.options)
                    )
                    for s in section.sources
                ]
            data = _without_none(data)
            if section.plugin_tables and not (
                data.get("to") or any(isinstance(v, dict) for v in data.values())
            ):
                continue
            out[name] = data
        return out

    def to_toml(self) -> str:
        import tomli_w

        header = f"# resolved from {self.path}\n" if self.path else ""
        return header + tomli_w.dumps(self.to_dict())
