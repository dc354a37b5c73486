"""A recipe's plugins resolved once: instances of the registered classes with the recipe's
validated options, and recipe_problems that see the other resolved plugins."""

from __future__ import annotations

from typing import Any

import pytest

from adaptool.base import PeftMethod
from adaptool.builtin.formatters import Text
from adaptool.errors import PluginError, RecipeError, RecipeProblem
from adaptool.recipe import RecipePlugins, resolve_plugins, validate_recipe
from adaptool.recipe.schema import DataSection, ModelSection, OutputSection, Recipe
from adaptool.registry import Provider


def raw(**sections: dict[str, Any]) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "model": {"name": "/models/base"},
        "data": {"source": "/data/rows.jsonl", "formatter": "text", "column": "body"},
        "output": {"dir": "/runs/out"},
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    return recipe


def test_resolve_plugins_instantiates_the_registered_classes_with_the_recipes_options(registry):
    recipe = validate_recipe(
        raw(quantization={"backend": "bnb-4bit", "quant_type": "fp4"}, peft={"use_dora": True})
    )
    plugins = resolve_plugins(recipe)
    assert isinstance(plugins, RecipePlugins)
    assert type(plugins.formatter) is registry.get("formatter", "text")
    assert type(plugins.quantizer) is registry.get("quantizer", "bnb-4bit")
    assert type(plugins.method) is registry.get("peft-method", "lora")
    assert plugins.formatter.options.column == "body"
    assert plugins.formatter.columns() == ["body"]
    assert plugins.quantizer.options.quant_type == "fp4"
    assert plugins.quantizer.options.double_quant is True  # a default filled in
    assert plugins.method.options.use_dora is True
    assert plugins.formatter.options.model_dump() == recipe.data.options


def test_iterating_gives_formatter_quantizer_and_method(registry):
    plugins = resolve_plugins(validate_recipe(raw()))
    assert list(plugins) == [plugins.formatter, plugins.quantizer, plugins.method]
    assert [p.kind for p in plugins] == ["formatter", "quantizer", "peft-method"]


def test_resolving_uses_the_process_wide_plugin_set(registry):
    recipe = Recipe(
        model=ModelSection(name="/m"),
        data=DataSection(source="/d.jsonl", formatter="no-such-formatter"),
        output=OutputSection(dir="/o"),
    )
    with pytest.raises(PluginError, match="unknown formatter 'no-such-formatter'"):
        resolve_plugins(recipe)


def test_pissa_on_a_quantized_base_is_a_problem_on_peft_init(registry):
    with pytest.raises(RecipeError) as exc:
        validate_recipe(raw(quantization={"backend": "bnb-4bit"}, peft={"init": "pissa"}))
    [problem] = exc.value.problems
    assert problem.key == "peft.init"
    assert 'init = "pissa"' in problem.message
    assert "bnb-4bit" in problem.message


def test_pissa_on_an_unquantized_base_is_fine(registry):
    recipe = validate_recipe(raw(peft={"init": "pissa"}))
    assert recipe.peft.options["init"] == "pissa"


def test_recipe_problems_see_the_other_resolved_plugins(registry):
    seen: list[RecipePlugins] = []

    class TextOnly(PeftMethod):
        """A method that only works with the text formatter."""

        name = "text-only"

        def recipe_problems(self, recipe, plugins):
            seen.append(plugins)
            if not isinstance(plugins.formatter, Text):
                return [RecipeProblem("peft.method", "needs the text formatter")]
            return []

    registry.add("peft-method", TextOnly, Provider("tests", "tests", "0"))
    recipe = validate_recipe(raw(peft={"method": "text-only"}))
    [plugins] = seen
    assert plugins.method.name == "text-only"
    assert plugins.formatter.options.column == "body"
    assert recipe.peft.method == "text-only"

    quotes = raw(peft={"method": "text-only"})
    quotes["data"] = {"source": "/data/quotes.jsonl", "formatter": "quote-tags"}
    with pytest.raises(RecipeError) as exc:
        validate_recipe(quotes)
    assert [str(p) for p in exc.value.problems] == ["peft.method: needs the text formatter"]
    assert type(seen[-1].formatter).__name__ == "QuoteTags"


def test_a_plugin_whose_recipe_check_fails_is_named(plugins):
    """A third-party plugin written for another version (its recipe_problems raises) is a
    PluginError naming it, not a traceback."""
    import pytest

    from adaptool import Formatter, PluginError
    from adaptool.recipe import validate_recipe

    class Old(Formatter):
        name = "old"

        def recipe_problems(self, recipe, registry):
            return recipe.quantizer(registry).problems  # the removed Recipe.quantizer()

    plugins.registry.add("formatter", Old, plugins.plugins["adaptool.builtin.formatters"].provider)
    document = {
        "model": {"name": "org/m"},
        "data": {"source": "d.jsonl", "formatter": "old"},
        "output": {"dir": "out"},
    }
    with pytest.raises(PluginError, match=r"formatter 'old' failed while checking the recipe"):
        validate_recipe(document)
