"""TOML recipe -> validated :class:`Recipe`, with every problem reported at once.

A recipe has fixed sections (``[model] [quantization] [peft] [data] [training] [output]
[hub]``). Three sections name a plugin (``quantization.backend``, ``peft.method``,
``data.formatter``); their other keys are that plugin's options and are checked by its schema.
Relative paths resolve against the recipe file's folder; ``--set`` values against the current
directory.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adaptool.errors import PluginError, RecipeError, RecipeProblem

if TYPE_CHECKING:
    from adaptool.base import Formatter, PeftMethod, Plugin, Quantizer
    from adaptool.registry import Registry

LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class Section(BaseModel):
    """A recipe section: typed as TOML is typed, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    #: For plugin sections: (key naming the plugin, plugin kind).
    plugin_key: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def cross_key_problems(cls, values: Mapping[str, Any]) -> list[str]:
        """Rules across keys, checked on the raw values so they are reported together with
        every per-key problem."""
        return []


class ModelSection(Section):
    name: str = Field(min_length=1, description="Hub model id or local path")
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
    r: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: Literal["auto", "all-linear"] | list[str] = "auto"
    options: dict[str, Any] = Field(default_factory=dict)


class DataSection(Section):
    plugin_key: ClassVar[tuple[str, str] | None] = ("formatter", "formatter")
    source: str = Field(min_length=1, description="Hub dataset id or local file")
    split: str = "train"
    formatter: str
    eval_fraction: float = Field(default=0.0, ge=0, lt=1)
    max_length: int = Field(default=512, gt=0)
    train_on_prompt: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_absolute()


class TrainingSection(Section):
    batch_size: int = Field(default=4, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: float = Field(default=2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, ge=0)
    max_steps: int | None = Field(default=None, gt=0)
    epochs: float | None = Field(default=None, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 where the hardware computes it natively"
    )
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    seed: int = 42
    logging_steps: int = Field(default=10, gt=0)
    save_steps: int = Field(default=100, ge=0, description="0: no intermediate checkpoints")
    eval_steps: int = Field(default=0, ge=0, description="0: at every save and at the end")
    group_by_length: bool = True

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


class OutputSection(Section):
    dir: str = Field(min_length=1)


class HubSection(Section):
    repo_id: str | None = Field(None, description="where `adaptool push` puts the adapter")
    private: bool = True
    revision: str | None = Field(None, description="branch to push to (default main)")
    license: str | None = Field(None, description="license id for the model card, e.g. mit")


SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection,
    "quantization": QuantizationSection,
    "peft": PeftSection,
    "data": DataSection,
    "training": TrainingSection,
    "output": OutputSection,
    "hub": HubSection,
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
    path: Path | None = None

    # -- plugins --------------------------------------------------------------------------
    def formatter(self, registry: Registry | None = None) -> Formatter:
        return _instantiate(registry, "formatter", self.data.formatter, self.data.options)

    def quantizer(self, registry: Registry | None = None) -> Quantizer:
        return _instantiate(
            registry, "quantizer", self.quantization.backend, self.quantization.options
        )

    def peft_method(self, registry: Registry | None = None) -> PeftMethod:
        return _instantiate(registry, "peft-method", self.peft.method, self.peft.options)

    # -- serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The recipe as TOML-ready nested dicts: plugin options inline, no None values."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            if section is None:
                continue
            data = section.model_dump(exclude={"options"})
            data.update(getattr(section, "options", {}))
            out[name] = {k: v for k, v in data.items() if v is not None}
        return out

    def to_toml(self) -> str:
        import tomli_w

        header = f"# resolved from {self.path}\n" if self.path else ""
        return header + tomli_w.dumps(self.to_dict())


def _instantiate(registry: Registry | None, kind: str, name: str, options: Mapping) -> Any:
    if registry is None:
        from adaptool.plugins import get_plugins

        registry = get_plugins().registry
    cls = registry.get(kind, name)
    return cls(cls.Options.model_validate(dict(options)))


# -- loading ------------------------------------------------------------------------------


def load_recipe(
    path: str | Path,
    overrides: Iterable[str] = (),
    *,
    registry: Registry | None = None,
    cwd: Path | None = None,
) -> Recipe:
    """Read, override (``section.key=value``), resolve paths and validate a recipe file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(str(path), [RecipeProblem("", "recipe file not found")]) from None
    except OSError as exc:
        raise RecipeError(str(path), [RecipeProblem("", f"cannot read the file: {exc}")]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [RecipeProblem("", f"not valid TOML: {exc}")]) from None
    return validate_recipe(raw, path=path, overrides=overrides, registry=registry, cwd=cwd)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``training.max_steps=10`` -> (["training", "max_steps"], 10). Values are TOML
    (``true``, ``2e-4``, ``["a", "b"]``, ``"s"``); anything that is not TOML is a string."""
    key, sep, value = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or len(parts) < 2 or not all(parts):
        raise RecipeError(
            "--set", [RecipeProblem(text, "expected section.key=value, e.g. training.max_steps=10")]
        )
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return parts, parsed


def validate_recipe(
    raw: Mapping[str, Any],
    *,
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    registry: Registry | None = None,
    cwd: Path | None = None,
) -> Recipe:
    """Validate a recipe given as nested dicts (as parsed from TOML); raise a RecipeError
    listing every problem found."""
    if registry is None:
        from adaptool.plugins import get_plugins

        registry = get_plugins().registry
    label = str(path) if path is not None else "<recipe>"
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    cwd = cwd or Path.cwd()

    data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    _resolve_paths(data, base_dir)
    from_cli: dict[str, Any] = {}
    for text in overrides:
        keys, value = parse_override(text)
        target = data
        for key in keys[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[keys[-1]] = value
        if len(keys) == 2:
            from_cli.setdefault(keys[0], {})[keys[1]] = value
    for section_name, values in from_cli.items():
        if isinstance(data.get(section_name), dict):
            _resolve_paths({section_name: values}, cwd)
            data[section_name].update(values)

    problems: list[RecipeProblem] = []
    sections: dict[str, Section] = {}
    for key in data:
        if key not in SECTIONS:
            problems.append(RecipeProblem(key, "unknown section" + _did_you_mean(key, SECTIONS)))
    for name, cls in SECTIONS.items():
        if name not in data:
            if name in REQUIRED_SECTIONS:
                problems.append(RecipeProblem(name, f"missing section: add a [{name}] table"))
                continue
            if name == "hub":
                continue
            data[name] = {}  # defaults, with the default plugin's options filled in
        if not isinstance(data[name], dict):
            problems.append(
                RecipeProblem(name, f"expected a [{name}] table, found {_show(data[name])}")
            )
            continue
        section = _validate_section(name, cls, data[name], registry, problems)
        if section is not None:
            sections[name] = section

    if problems:
        raise RecipeError(label, problems)
    recipe = Recipe(**sections, path=Path(path).resolve() if path is not None else None)
    for kind_name in ("formatter", "quantizer", "peft_method"):
        plugin = getattr(recipe, kind_name)(registry)
        problems.extend(plugin.recipe_problems(recipe, registry))
    if problems:
        raise RecipeError(label, problems)
    return recipe


def _validate_section(
    name: str,
    cls: type[Section],
    values: dict[str, Any],
    registry: Registry,
    problems: list[RecipeProblem],
) -> Section | None:
    core_keys = [k for k in cls.model_fields if k != "options"]
    core = {k: v for k, v in values.items() if k in core_keys}
    extra = {k: v for k, v in values.items() if k not in core_keys}
    ok = True
    cross = cls.cross_key_problems(core)
    problems.extend(RecipeProblem(name, message) for message in cross)
    try:
        section = cls.model_validate(core)
    except ValidationError as exc:
        if not cross:
            problems.extend(_problems_from(exc, prefix=name))
        else:  # the cross-key rule failing again is already reported
            problems.extend(p for p in _problems_from(exc, prefix=name) if p.key != name)
        section, ok = None, False

    if cls.plugin_key is None:
        for key in extra:
            problems.append(
                RecipeProblem(f"{name}.{key}", "unknown key" + _did_you_mean(key, core_keys))
            )
        return section if ok and not extra else None

    name_key, kind = cls.plugin_key
    plugin_name = core.get(name_key, cls.model_fields[name_key].default)
    if not isinstance(plugin_name, str):
        return None  # already reported by the section's own validation
    try:
        plugin_cls: type[Plugin] = registry.get(kind, plugin_name)
    except PluginError as exc:
        problems.append(RecipeProblem(f"{name}.{name_key}", str(exc)))
        # the other keys may be options of the intended plugin: report only likely typos
        for key in extra:
            if hint := _did_you_mean(key, core_keys):
                problems.append(RecipeProblem(f"{name}.{key}", "unknown key" + hint))
        return None
    option_keys = list(plugin_cls.Options.model_fields)
    unknown = [k for k in extra if k not in option_keys]
    for key in unknown:
        known = core_keys + option_keys
        problems.append(
            RecipeProblem(
                f"{name}.{key}",
                f"unknown key (neither a [{name}] key nor an option of {kind} "
                f"'{plugin_name}')" + _did_you_mean(key, known),
            )
        )
    try:
        options = plugin_cls.Options.model_validate(
            {k: extra[k] for k in extra if k in option_keys}
        )
    except ValidationError as exc:
        problems.extend(_problems_from(exc, prefix=name, note=f" ({kind} '{plugin_name}' option)"))
        return None
    if not ok or unknown:
        return None
    return section.model_copy(update={"options": options.model_dump()})


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make local paths absolute against ``base`` (in place). Hub ids are left alone."""
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        model["name"] = _maybe_local(model["name"], base, suffixes=())
    source = data.get("data")
    if isinstance(source, dict) and isinstance(source.get("source"), str):
        source["source"] = _maybe_local(source["source"], base, suffixes=LOCAL_DATA_SUFFIXES)
    output = data.get("output")
    if isinstance(output, dict) and isinstance(output.get("dir"), str) and output["dir"]:
        output["dir"] = str((base / Path(output["dir"]).expanduser()).resolve())


def _maybe_local(value: str, base: Path, *, suffixes: tuple[str, ...]) -> str:
    """A value is a local path when it is explicit (``./x``, ``/x``, ``~/x``), has a local-file
    suffix, or exists relative to ``base``; otherwise it is a Hub id."""
    if not value:
        return value
    candidate = base / Path(value).expanduser()
    explicit = value.startswith((".", "/", "~")) or value.lower().endswith(suffixes)
    if explicit or candidate.exists():
        return str(candidate.resolve())
    return value


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _show(value: Any) -> str:
    kinds = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }
    kind = kinds.get(type(value), type(value).__name__)
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"


def _problems_from(exc: ValidationError, *, prefix: str, note: str = "") -> list[RecipeProblem]:
    """One problem per key; the members of a union (``true`` or ``"auto"``) are joined by 'or'."""
    expected: dict[str, list[str]] = {}
    found: dict[str, Any] = {}
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        key = ".".join([prefix, *loc]) if loc else prefix
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "required key is missing"
        elif loc:
            msg = "expected " + msg.removeprefix("Input should be ")
            found.setdefault(key, err["input"])
        if msg not in expected.setdefault(key, []):
            expected[key].append(msg)
    problems = []
    for key, msgs in expected.items():
        text = " or ".join([msgs[0], *(m.removeprefix("expected ") for m in msgs[1:])]) + note
        if key in found:
            text += f", found {_show(found[key])}"
        problems.append(RecipeProblem(key, text))
    return problems


def _is_union_tag(part: Any) -> bool:
    """pydantic adds the union member to a location (``literal['auto']``, ``list[str]``)."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})
