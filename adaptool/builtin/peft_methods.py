"""Built-in PEFT method: LoRA (with DoRA, rsLoRA and a choice of initialisation)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from adaptool.base import Options, PeftMethod
from adaptool.errors import RecipeProblem
from adaptool.hookspecs import hookimpl

if TYPE_CHECKING:
    from adaptool.recipe.resolve import RecipePlugins
    from adaptool.recipe.schema import PeftSection, Recipe


def target_modules(settings: PeftSection) -> Any:
    """``auto`` lets peft pick the architecture's default (bloom: query_key_value)."""
    return None if settings.target_modules == "auto" else settings.target_modules


class Lora(PeftMethod):
    """Low-rank adaptation; ``use_dora`` for DoRA, ``use_rslora`` for rank-stabilised scaling."""

    name = "lora"
    description = "LoRA (+ DoRA, rsLoRA, gaussian/PiSSA/OLoRA/orthogonal init)"

    class Options(Options):
        use_dora: bool = False
        use_rslora: bool = False
        init: Literal["default", "gaussian", "pissa", "olora", "orthogonal"] = "default"
        modules_to_save: list[str] | None = None

    def peft_config(self, settings: PeftSection) -> Any:
        from peft import LoraConfig

        init: bool | str = True if self.options.init == "default" else self.options.init
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            bias=settings.bias,
            target_modules=target_modules(settings),
            use_dora=self.options.use_dora,
            use_rslora=self.options.use_rslora,
            init_lora_weights=init,
            modules_to_save=self.options.modules_to_save,
        )

    def recipe_problems(self, recipe: Recipe, plugins: RecipePlugins) -> list[RecipeProblem]:
        problems = []
        backend = recipe.quantization.backend
        if self.options.use_dora and backend == "bnb-8bit":
            problems.append(
                RecipeProblem(
                    "peft.use_dora",
                    "DoRA gives wrong outputs on a bitsandbytes 8-bit base (peft 0.21); use "
                    'quantization.backend = "bnb-4bit" or "none", or set use_dora = false',
                )
            )
        if self.options.init in ("pissa", "olora") and plugins.quantizer.quantized:
            problems.append(
                RecipeProblem(
                    "peft.init",
                    f'init = "{self.options.init}" rewrites the base weights and cannot run on a '
                    f'quantized base ({backend}); use init = "default" or "gaussian"',
                )
            )
        return problems


@hookimpl
def register_peft_methods(register) -> None:
    register(Lora)
