"""The typed base classes plugins implement: Formatter, Quantizer and PeftMethod.

Each plugin class declares its ``name``, a ``version`` of its behaviour (recorded in manifests),
and an ``Options`` schema (a pydantic model) for the recipe keys it accepts. The recipe validator
checks the options of the chosen plugin against that schema, so a plugin never sees a bad option.
Heavy libraries (torch, transformers, peft, bitsandbytes) are imported inside methods only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from adaptool.errors import RecipeProblem
    from adaptool.recipe.resolve import RecipePlugins
    from adaptool.recipe.schema import PeftSection, Recipe


class Options(BaseModel):
    """Base of every plugin's options schema: typed as TOML is typed, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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
    unless the recipe sets ``data.train_on_prompt``."""

    prompt: str
    completion: str


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


class PeftMethod(Plugin):
    """Builds the ``peft`` config of one parameter-efficient method.

    Example::

        class IA3(PeftMethod):
            name = "ia3"
            def peft_config(self, settings):
                from peft import IA3Config
                return IA3Config(task_type="CAUSAL_LM")
    """

    kind: ClassVar[str] = "peft-method"
    #: False for methods whose weights cannot be folded into the base (prompt tuning...).
    mergeable: ClassVar[bool] = True

    def peft_config(self, settings: PeftSection) -> Any:
        """Return a ``peft.PeftConfig`` for the recipe's ``[peft]`` section (common keys:
        r, alpha, dropout, bias, target_modules; this method's own options are in
        ``self.options``)."""
        raise NotImplementedError


def _strip_eos(text: str, tokenizer: Any) -> str:
    eos = getattr(tokenizer, "eos_token", None)
    return (text.removesuffix(eos) if eos else text).strip()
