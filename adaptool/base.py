"""The typed base classes plugins implement: Formatter, Quantizer and PeftMethod.

Each plugin class declares its ``name``, a ``version`` of its behaviour (recorded in manifests),
and an ``Options`` schema (a pydantic model) for the recipe keys it accepts. The recipe validator
checks the options of the chosen plugin against that schema, so a plugin never sees a bad option.
Heavy libraries (torch, transformers, peft, bitsandbytes) are imported inside methods only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from adaptool.errors import RecipeProblem
    from adaptool.recipe.resolve import RecipePlugins
    from adaptool.recipe.schema import PeftSection, Recipe


class Options(BaseModel):
    """Base of every plugin's options schema: typed as TOML is typed, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RecipeRelative:
    """Marks an option that may name a file: ``Annotated[str, RecipeRelative()]``. A relative
    value that names a file beside the recipe is made absolute when the recipe is loaded, as
    ``data.source`` is (a value that is not such a file — a built-in name — is left alone),
    and the file's content is part of the tokenization cache's key."""


def recipe_relative(options: Any) -> list[str]:
    """The fields of an Options class (or instance) marked :class:`RecipeRelative`, also
    inside ``Annotated[...] | None``."""
    import typing

    found = []
    for name, field in getattr(options, "model_fields", {}).items():
        metadata = list(field.metadata)
        for arg in typing.get_args(field.annotation):
            metadata += list(getattr(arg, "__metadata__", ()))
        if any(isinstance(m, RecipeRelative) for m in metadata):
            found.append(name)
    return found


class Plugin:
    """What every kind of plugin shares: a name, a version, an options schema."""

    kind: ClassVar[str] = "plugin"
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def recipe_problems(self, recipe: Recipe, plugins: RecipePlugins) -> list[RecipeProblem]:
        """Problems this plugin sees in the whole recipe (e.g. an option that needs another
        section set a certain way), given the recipe's other resolved ``plugins``. Called once
        every section is valid; default: none."""
        return []


@dataclass(frozen=True)
class Example:
    """One training example as a formatter renders it: the loss goes on ``completion`` only,
    unless the recipe sets ``data.train_on_prompt``. A formatter that marks what is trained
    itself (every assistant turn of a conversation) gives ``spans``: (start, end) character
    ranges of ``prompt + completion``; the tokens inside them are trained, nothing else."""

    prompt: str
    completion: str
    spans: tuple[tuple[int, int], ...] = ()


class Formatter(Plugin):
    """Turns a dataset row into prompt + completion, and a raw input into a generation prompt.

    Example::

        class Upper(Formatter):
            name = "upper"
            class Options(adaptool.Options):
                column: str = "text"
            def columns(self): return [self.options.column]
            def format(self, row, tokenizer):
                return Example("Shout: ", row[self.options.column].upper())
            def generation_prompt(self, raw, tokenizer): return "Shout: "
    """

    kind: ClassVar[str] = "formatter"
    #: True when the prompt text already holds the tokenizer's special tokens (a chat template
    #: writes its own BOS): the prompt is then encoded without adding special tokens again.
    prompt_has_special_tokens: ClassVar[bool] = False
    #: True when the examples are one stream of documents (EOS between them) to be cut into
    #: blocks of ``data.max_length`` tokens, everything trained (pretraining text), rather
    #: than one example per row
    chunks: bool = False

    def columns(self) -> list[str]:
        """The dataset columns this formatter needs (checked before any row is formatted)."""
        raise NotImplementedError

    def format(self, row: Mapping[str, Any], tokenizer: Any) -> Example:
        """Render one dataset row for training."""
        raise NotImplementedError

    def generation_prompt(self, raw: str | Mapping[str, Any], tokenizer: Any) -> str:
        """Build the prompt for generation from a raw input: a string typed by a user, or a
        dataset row (then the completion's columns are ignored)."""
        raise NotImplementedError

    def parse(self, completion: str) -> Any | None:
        """Parse a generated completion into a structured result, or None when it does not
        parse (or this formatter has no structure to parse)."""
        return None

    def score(
        self, rows: Sequence[Mapping[str, Any]], outputs: Sequence[Any], tokenizer: Any
    ) -> dict[str, float]:
        """Score generated ``outputs`` (``adaptool.generate.Generation``) against the rows they
        were generated from. Default: exact match with the reference completion and the share
        of outputs that stop at EOS."""
        n = max(len(outputs), 1)
        exact = sum(
            out.output.strip() == _strip_eos(self.format(row, tokenizer).completion, tokenizer)
            for row, out in zip(rows, outputs, strict=True)
        )
        return {
            "rows": len(outputs),
            "exact_match": exact / n,
            "stopped_at_eos": sum(o.stopped for o in outputs) / n,
        }


class ChatOptions(Options):
    """The options every :class:`ChatTemplateFormatter` understands (a subclass's ``Options``
    may extend them; one that does not gets their defaults)."""

    #: "all": every turn of ``roles_to_train`` is trained; "last": only the final one
    train_turns: Literal["all", "last"] = "all"
    roles_to_train: list[str] = ["assistant"]
    #: the column holding the tools (JSON schemas) a conversation may call, when there is one
    tools_column: str = "tools"
    #: an assistant's reasoning (``reasoning_content``): rendered as the template renders it,
    #: or dropped before rendering
    reasoning: Literal["keep", "drop"] = "keep"
    #: a template for a base model that has none, or to use instead of its own: a built-in
    #: name (chatml, chatml-generation, zephyr) or a .jinja file (relative to the recipe)
    chat_template: Annotated[str, RecipeRelative()] | None = None


class ChatTemplateFormatter(Formatter):
    """A formatter for conversations, rendered with the tokenizer's chat template: a subclass
    says how a row (or a typed string) becomes ``{"role", "content"}`` messages (assistant
    messages may carry ``tool_calls`` and ``reasoning_content``, ``tool`` messages the
    results).

    By default every assistant turn is trained (``train_turns``, ``roles_to_train``): the
    trained spans come from the template's own rendering — its ``{% generation %}`` markers
    where it has them, else the rendering of each conversation prefix, which must be a prefix
    of the whole (a row for which it is not is refused). The last assistant reply is the
    completion a generation prompt asks for.

    Example::

        class ShareGPT(ChatTemplateFormatter):
            name = "sharegpt"
            def columns(self): return ["conversations"]
            def messages(self, raw):
                if isinstance(raw, str):
                    return [{"role": "user", "content": raw}]
                return [{"role": ROLES[t["from"]], "content": t["value"]}
                        for t in raw["conversations"]]
    """

    prompt_has_special_tokens: ClassVar[bool] = True
    Options: ClassVar[type[Options]] = ChatOptions

    def recipe_problems(self, recipe: Recipe, plugins: RecipePlugins) -> list[RecipeProblem]:
        """A ``chat_template`` that is neither a built-in nor a file is refused up front."""
        from adaptool.chat_templates import resolve_template
        from adaptool.errors import DataError, RecipeProblem

        override = self.option("chat_template")
        if override:
            try:
                resolve_template(override)
            except DataError as exc:
                return [RecipeProblem("data.chat_template", str(exc))]
        return []

    def messages(self, raw: str | Mapping[str, Any]) -> list[dict[str, Any]]:
        """The conversation in ``raw`` (a dataset row, or a string a user typed) as
        ``{"role", "content"}`` messages. Raise :class:`adaptool.DataError` for a row that is
        not one."""
        raise NotImplementedError

    def option(self, name: str) -> Any:
        """A :class:`ChatOptions` value (its default when this formatter's Options lack it)."""
        return getattr(self.options, name, ChatOptions.model_fields[name].default)

    def template(self, tokenizer: Any) -> str:
        """The chat template in use: the ``chat_template`` option's, else the tokenizer's."""
        from adaptool.errors import ModelError

        override = self.option("chat_template")
        template = getattr(tokenizer, "chat_template", None)
        if override:
            from adaptool.chat_templates import resolve_template
            from adaptool.errors import DataError

            try:
                return resolve_template(override)
            except DataError:
                # an adapter's tokenizer carries the template it was trained with (training
                # saves it there), where the file it came from may not be; when training, the
                # recipe check has already refused a file that is not there
                if template:
                    return str(template)
                raise
        if not template:
            raise ModelError(
                f"formatter '{self.name}' needs a tokenizer with a chat template; "
                f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')} has none. Set the "
                f"formatter's chat_template option (a built-in: chatml, zephyr; or a .jinja "
                f"file), use a chat model's tokenizer, or another formatter (instruction, text)."
            )
        return template if isinstance(template, str) else str(template)

    def render(
        self,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        *,
        prompt: bool,
        tools: list[Any] | None = None,
    ) -> str:
        """``messages`` through the chat template (with the assistant's turn opened when
        ``prompt``)."""
        return tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            chat_template=self.template(tokenizer),
            tokenize=False,
            add_generation_prompt=prompt,
        )

    def conversation(self, raw: str | Mapping[str, Any]) -> tuple[list[dict[str, Any]], Any]:
        """The messages of ``raw`` (reasoning kept or dropped as the options say) and its
        tools (None when the row has none)."""
        messages = [dict(m) for m in self.messages(raw)]
        if self.option("reasoning") == "drop":
            for message in messages:
                message.pop("reasoning_content", None)
                message.pop("reasoning", None)
        tools = None
        if not isinstance(raw, str):
            tools = raw.get(self.option("tools_column")) or None
        return messages, tools

    def format(self, row: Mapping[str, Any], tokenizer: Any) -> Example:
        from adaptool.errors import DataError

        messages, tools = self.conversation(row)
        roles = set(self.option("roles_to_train"))
        if not messages or messages[-1]["role"] not in roles:
            raise DataError(
                f"formatter '{self.name}' needs the last message of every conversation to be "
                f"the assistant's (it is the completion trained on)."
            )
        full = self.render(tokenizer, messages, prompt=False, tools=tools)
        template = self.template(tokenizer)
        from adaptool.chat_templates import has_generation_markers

        last_only = self.option("train_turns") == "last"
        if has_generation_markers(template) and roles == {"assistant"}:
            spans = self._marked_spans(tokenizer, template, messages, tools, full)
        else:
            spans = self._prefix_spans(tokenizer, messages, tools, full, roles, last_only)
        if not spans:
            raise DataError(f"formatter '{self.name}': the conversation has no turn to train.")
        if last_only:
            spans = spans[-1:]
        cut = spans[-1][0]
        return Example(full[:cut], full[cut:], tuple(spans))

    def _prefix_spans(
        self,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        tools: Any,
        full: str,
        roles: set[str],
        last_only: bool = False,
    ) -> list[tuple[int, int]]:
        """Each trained turn's span (the last one's alone with ``last_only``): from the end of
        the conversation before it (with the assistant's turn opened) to the end of the
        conversation through it. Every rendering must be a prefix of the whole."""
        from adaptool.errors import DataError

        spans = []
        indices = [i for i, m in enumerate(messages) if m["role"] in roles]
        for i in indices[-1:] if last_only else indices:
            message = messages[i]
            before = (
                self.render(
                    tokenizer, messages[:i], prompt=message["role"] == "assistant", tools=tools
                )
                if i
                else ""  # nothing before it (a template renders no empty conversation)
            )
            through = self.render(tokenizer, messages[: i + 1], prompt=False, tools=tools)
            for part in (before, through):
                if not full.startswith(part):
                    raise DataError(
                        f"formatter '{self.name}': the chat template renders the conversation "
                        f"up to message {i + 1} differently from the same messages within the "
                        f"whole (it rewrites earlier turns, as templates that drop past "
                        f"reasoning do), so the trained turns cannot be found. Set "
                        f'train_turns = "last", reasoning = "drop", or a chat_template with '
                        f"{{% generation %}} markers."
                    )
            if len(through) > len(before):
                spans.append((len(before), len(through)))
        return spans

    def _marked_spans(
        self,
        tokenizer: Any,
        template: str,
        messages: list[dict[str, Any]],
        tools: Any,
        full: str,
    ) -> list[tuple[int, int]]:
        """The spans the template marks with ``{% generation %}``, rendered by transformers."""
        from transformers.utils.chat_template_utils import render_jinja_template

        from adaptool.errors import ModelError

        rendered, indices = render_jinja_template(
            [messages],
            tools=tools,
            chat_template=template,
            return_assistant_tokens_mask=True,
            add_generation_prompt=False,
            **tokenizer.special_tokens_map,
        )
        if rendered[0] != full:
            raise ModelError(
                f"formatter '{self.name}': the template renders differently with its "
                f"{{% generation %}} markers followed; it cannot mark the trained turns."
            )
        return [(int(a), int(b)) for a, b in indices[0] if b > a]

    def generation_prompt(self, raw: str | Mapping[str, Any], tokenizer: Any) -> str:
        messages, tools = self.conversation(raw)
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return self.render(tokenizer, messages, prompt=True, tools=tools)


class Quantizer(Plugin):
    """Decides how the base model's weights are loaded (and stored) for training.

    Example::

        class Half(Quantizer):
            name = "half"
            quantized = False
            def from_pretrained_kwargs(self): return {"dtype": torch.float16}
    """

    kind: ClassVar[str] = "quantizer"
    #: True when the loaded base holds quantized (k-bit) layers: training then prepares the
    #: model for k-bit training and merges never fold into the quantized weights.
    quantized: ClassVar[bool] = True

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for ``AutoModelForCausalLM.from_pretrained``."""
        raise NotImplementedError

    def after_load(self, model: Any) -> Any:
        """Fix-ups right after the base is loaded; returns the model. Default: none."""
        return model

    def for_sharding(self) -> Quantizer:
        """This backend as FSDP needs it (``distributed.strategy = "fsdp"``): sharding splits
        every weight as a floating-point tensor, so a backend that packs weights into
        integers returns a copy that stores them in a floating-point container, or raises
        :class:`~adaptool.errors.PluginError` saying why it cannot be sharded. Default:
        itself."""
        return self

    def describe(self) -> dict[str, Any]:
        """What to record in a manifest about this quantization."""
        return {"backend": self.name, **self.options.model_dump()}

    def round_trip(self, weight: Any, *, dtype: Any) -> Any:
        """``weight`` as the quantized base computes with it: quantized the way loading
        quantizes it (from ``dtype``, the dtype it was loaded in) and dequantized, in float32.
        ``merge --into dequantized`` folds adapters into these weights. Default: unchanged."""
        return weight.to(dtype).float()

    def quantized_layers(self, model: Any) -> set[str]:
        """Names of the layers of ``model`` (built on the meta device, unquantized) that loading
        with this backend quantizes. Default: none."""
        return set()


@dataclass(frozen=True)
class RunInfo:
    """What a PEFT method may need to know about the run it is configured for."""

    #: optimizer steps the run will take (None where unknown, e.g. ``adaptool check`` on a
    #: recipe whose data was not counted)
    total_steps: int | None = None
    #: whether the base is loaded quantized (k-bit layers)
    quantized: bool = False
    learning_rate: float = 2e-4
    #: where the run's tokenizer is loaded from (a Hub id or a folder)
    tokenizer: str | None = None
    #: returns the run's first training batches (``input_ids``, ``attention_mask``,
    #: ``labels`` tensors on the model's device), for data-driven initialisation (EVA)
    batches: Callable[[], list[dict[str, Any]]] | None = None


@dataclass
class LayerToFold:
    """One adapted layer of a base checkpoint, as the streamed merge hands it to
    :meth:`PeftMethod.fold`: the base layer's weight (out, in) and bias (None when it has
    none), in float32; the adapter's tensors for this layer, keyed by what follows the module
    name in the adapter file (``lora_A.weight``); the adapter's tensors that belong to no layer
    (VeRA's shared projections); and the adapter's peft config."""

    module: str
    weight: Any
    bias: Any
    tensors: dict[str, Any]
    shared: dict[str, Any]
    config: Any


def peft_type_name(value: Any) -> str:
    """peft's type of an adapter as one spelling, its name in capitals ("LORA"), whether it
    comes from an ``adapter_config.json`` (where older peft wrote "PeftType.LORA"), a
    ``PeftType`` or a method's :attr:`PeftMethod.peft_type`; "" for none."""
    if value is None:
        return ""
    return str(getattr(value, "value", value)).removeprefix("PeftType.").upper()


class PeftMethod(Plugin):
    """One parameter-efficient method: its ``peft`` config, and everything about it that is
    method-specific — how its saved weights are recognised and folded into a base (or why they
    cannot be), how it is described, per-step work and optimizer parameter groups.

    Example::

        class IA3(PeftMethod):
            name = "ia3"
            display_name = "IA³"
            peft_type = "IA3"
            uses = frozenset({"target_modules"})
            weight_parts = ("ia3_",)
            def peft_config(self, settings, run):
                from peft import IA3Config
                return IA3Config(task_type="CAUSAL_LM")
    """

    kind: ClassVar[str] = "peft-method"
    #: how the method is written in prose ("LoRA"); default: the name in capitals
    display_name: ClassVar[str] = ""
    #: peft's ``PeftType`` of the configs this method builds ("LORA"): how an adapter made
    #: without adaptool is matched to its method plugin
    peft_type: ClassVar[str | None] = None
    #: the common ``[peft]`` keys this method reads; setting another is a recipe problem
    uses: ClassVar[frozenset[str]] = frozenset({"r", "alpha", "dropout", "bias", "target_modules"})
    #: values of common keys where the recipe does not set them (peft's defaults)
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: how the names of the method's saved tensors start, after the module name ("lora_"):
    #: what the streamed merge groups an adapter file by
    weight_parts: ClassVar[tuple[str, ...]] = ()
    #: saved tensors that belong to no layer (VeRA's shared projections)
    shared_weights: ClassVar[tuple[str, ...]] = ()
    #: False for methods whose weights cannot be folded into the base (prompt tuning...)
    mergeable: ClassVar[bool] = True
    #: why not, when ``mergeable`` is False (shown by ``merge`` and ``check``)
    not_mergeable_because: ClassVar[str] = ""
    #: quantization backends peft cannot train this method on: backend -> why
    unsupported_backends: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def title(cls) -> str:
        """The display name (the plugin name in capitals by default)."""
        return cls.display_name or cls.name.upper()

    def peft_config(self, settings: PeftSection, run: RunInfo) -> Any:
        """Return a ``peft.PeftConfig`` for the recipe's ``[peft]`` section (``settings``;
        the effective common keys are in :meth:`common`) and this method's own options
        (``self.options``), for the run described by ``run``."""
        raise NotImplementedError

    def common(self, settings: PeftSection) -> dict[str, Any]:
        """The common ``[peft]`` keys this method ``uses``: the recipe's value where it sets
        one, else this method's ``defaults``, else adaptool's."""
        given = settings.model_fields_set
        return {
            key: getattr(settings, key)
            if key in given
            else self.defaults.get(key, getattr(settings, key))
            for key in sorted(self.uses)
        }

    def describe(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The hyperparameters that matter, from an adapter's peft config (the contents of
        ``adapter_config.json``): shown by ``check``, ``inspect`` and the model card.
        Default: the target modules."""
        targets = config.get("target_modules")
        return {"targets": _targets(targets)} if targets else {}

    def after_wrap(self, model: Any, run: RunInfo) -> None:
        """Called once the base is wrapped by peft (before training): fix-ups to the model or
        its config. Default: none."""

    def param_groups(self, model: Any, learning_rate: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (``params`` and, where it differs, ``lr``).
        Default: every trainable parameter at ``learning_rate``."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def loss_term(self, model: Any) -> Any | None:
        """A term added to the training loss (AdaLoRA's orthogonality regulariser), or None."""
        return None

    def after_optimizer_step(self, model: Any, step: int) -> None:
        """Per-step work after each optimizer step, before gradients are cleared (AdaLoRA's
        rank allocation); ``step`` counts from 0. Default: none."""

    def needs_initial_state(self) -> bool:
        """True when saving needs the adapter as it was initialised (PiSSA/OLoRA, converted to
        plain LoRA at save). Default: False."""
        return False

    def save(self, model: Any, folder: Path, *, initial: Path | None = None) -> None:
        """Save the trained adapter to ``folder`` (``initial``: where the adapter as
        initialised was saved, when :meth:`needs_initial_state`). Default: peft's own
        ``save_pretrained``."""
        model.save_pretrained(str(folder))

    def saved_shapes(self, model: Any) -> dict[str, tuple[int, ...]]:
        """The names and shapes of the tensors an adapter of this method saves for ``model``
        (wrapped by peft, on the meta device): what ``adaptool`` checks an adapter's file
        against before loading it. Default: peft's own state dict of the adapter."""
        from peft.utils import get_peft_model_state_dict

        return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}

    def save_checkpoint(self, model: Any, folder: Path) -> None:
        """Save what a checkpoint needs to resume the method exactly (written into
        ``folder``, beside the optimizer state). Default: the adapter, as peft saves it."""
        model.save_pretrained(str(folder))

    def load_checkpoint(self, model: Any, folder: Path) -> None:
        """Restore what :meth:`save_checkpoint` saved into the freshly wrapped ``model``."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))

    def fold(self, layer: LayerToFold) -> tuple[Any, Any]:
        """The layer's (weight, bias) with the adapter folded in, in float32. Default: peft's
        own layer code merges it, exactly as ``merge_and_unload`` would."""
        from adaptool.merging.fold import fold_with_peft

        return fold_with_peft(layer)

    def recipe_problems(self, recipe: Recipe, plugins: RecipePlugins) -> list[RecipeProblem]:
        from adaptool.errors import RecipeProblem

        problems = []
        for key in sorted(recipe.peft.model_fields_set - self.uses - {"method", "options"}):
            problems.append(
                RecipeProblem(
                    f"peft.{key}",
                    f"the {self.title()} method ('{self.name}') does not use {key}; remove it "
                    f"(it uses: {', '.join(sorted(self.uses)) or 'none of the common keys'})",
                )
            )
        backend = recipe.quantization.backend
        if backend in self.unsupported_backends:
            problems.append(
                RecipeProblem(
                    "quantization.backend",
                    f"{self.title()} cannot be trained on a {backend} base: "
                    f"{self.unsupported_backends[backend]}; use another backend or method",
                )
            )
        return problems


@dataclass
class TrainingContext:
    """What loggers and callbacks see of a training run. ``step`` is the optimizer steps done;
    the model is the peft-wrapped one being trained (a callback that evaluates it puts it
    back in training mode); ``eval_rows`` are the held-out rows as loaded (None without an
    eval split)."""

    output_dir: Path
    recipe: Recipe
    total_steps: int
    model: Any
    tokenizer: Any
    formatter: Formatter
    method: PeftMethod
    eval_rows: Any
    #: the step a resumed run continued from (None for a fresh run)
    resumed_from: int | None = None
    step: int = 0
    #: why the run is stopping early, once a callback asked (None: it is not)
    stop_reason: str | None = None
    #: generates on rows and scores with the formatter: ``adaptool.evaluate.score_rows``
    scorer: Any = None

    def stop(self, reason: str) -> None:
        """End the run after this step, as finished (its output is written): early stopping."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def generation_scores(self, rows: int, max_new_tokens: int) -> dict[str, float]:
        """The formatter's scores of greedy generations on the first ``rows`` held-out rows,
        as ``eval_<score>`` (computed once per step, whoever asks)."""
        key = (self.step, rows, max_new_tokens)
        cache = self.__dict__.setdefault("_scores", {})
        if key not in cache:
            subset = [self.eval_rows[i] for i in range(min(rows, len(self.eval_rows)))]
            was_training, use_cache = self.model.training, self.model.config.use_cache
            self.model.eval()
            self.model.config.use_cache = True
            try:
                scores, _ = self.scorer(
                    self.model,
                    self.tokenizer,
                    self.formatter,
                    subset,
                    max_new_tokens=max_new_tokens,
                )
            finally:
                self.model.config.use_cache = use_cache
                self.model.train(was_training)
            cache[key] = {
                f"eval_{k}": float(v)
                for k, v in scores.items()
                if k != "rows" and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        return dict(cache[key])

    def save_trainable(self, folder: Path) -> None:
        """Save the adapter as it is now so that :meth:`load_trainable` restores it exactly
        (the method's checkpoint format)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.method.save_checkpoint(self.model, folder)

    def load_trainable(self, folder: Path) -> None:
        """Put back the adapter :meth:`save_trainable` saved."""
        self.method.load_checkpoint(self.model, folder)


class Logger(Plugin):
    """Receives every logged record of a run (a tracker: TensorBoard, MLflow, ...). A record
    holds ``step`` and some of: ``loss``, ``lr``, ``grad_norm``, ``tokens``, ``tokens_per_s``,
    ``epoch``, ``eval_loss`` and ``eval_<metric>`` (a formatter's scores on held-out rows).

    Example::

        class Print(Logger):
            name = "print"
            def log(self, record):
                print(record)
    """

    kind: ClassVar[str] = "logger"

    def start(self, context: TrainingContext) -> None:
        """Called once before the first step (also when a run resumes). Default: nothing."""

    def log(self, record: Mapping[str, Any]) -> None:
        """One logged record (see the class docstring)."""
        raise NotImplementedError

    def finish(self, context: TrainingContext) -> None:
        """Called once when the loop ends (finished, stopped early or interrupted): flush and
        close. Default: nothing."""


class Callback(Plugin):
    """Hooks into the training loop: after each step, at each evaluation, after each
    checkpoint and at the end. A callback can stop the run (``context.stop(reason)``), add
    metrics to an evaluation's record, and keep state that a resumed run gets back.

    Example::

        class StopAt(Callback):
            name = "stop-at"
            class Options(adaptool.Options):
                loss: float = 0.5
            def on_step(self, context, record):
                if record and record.get("loss", 1e9) < self.options.loss:
                    context.stop(f"loss below {self.options.loss}")
    """

    kind: ClassVar[str] = "callback"
    #: True when the callback needs an eval split (``data.eval_fraction`` > 0)
    needs_eval: ClassVar[bool] = False

    def on_step(self, context: TrainingContext, record: Mapping[str, Any] | None) -> None:
        """After each optimizer step; ``record`` is what was logged at it (None if nothing)."""

    def on_eval(self, context: TrainingContext, record: Mapping[str, Any]) -> dict[str, Any]:
        """At each evaluation, with its record (``eval_loss`` and what earlier callbacks
        added); returns metrics to add to the record (logged with it). Default: none."""
        return {}

    def on_save(self, context: TrainingContext, checkpoint: Path) -> None:
        """After a checkpoint was written to ``checkpoint``."""

    def on_end(self, context: TrainingContext) -> dict[str, Any]:
        """When the loop has ended and before the output is written (not on an interrupt):
        may change the model (keep the best weights). Returns what to record in the
        manifest under ``callbacks.<name>``. Default: nothing."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state saved in every checkpoint, for :meth:`load_state_dict`."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state of a resumed run."""

    def recipe_problems(self, recipe: Recipe, plugins: RecipePlugins) -> list[RecipeProblem]:
        from adaptool.errors import RecipeProblem

        if self.needs_eval and all(s.eval_fraction == 0 for s in recipe.data.all_sources):
            return [
                RecipeProblem(
                    f"callbacks.{self.name}",
                    f"the '{self.name}' callback evaluates on held-out rows: set "
                    f"data.eval_fraction (e.g. 0.1)",
                )
            ]
        return []


def _targets(value: Any) -> Any:
    if isinstance(value, (list, tuple, set)):
        short = sorted({str(v).rsplit(".", 1)[-1] for v in value})
        return short
    return value


def _strip_eos(text: str, tokenizer: Any) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    return (text.removesuffix(eos) if eos else text).strip()
