"""Recipes: the schema (plain data), loading (TOML, ``--set``, validation) and the plugins a
recipe names, resolved once."""

from __future__ import annotations

from adaptool.recipe.loading import load_recipe, parse_override, validate_recipe
from adaptool.recipe.resolve import RecipePlugins, resolve_plugins
from adaptool.recipe.schema import (
    DataSection,
    HubSection,
    ModelSection,
    OutputSection,
    PeftSection,
    QuantizationSection,
    Recipe,
    TrainingSection,
)

__all__ = [
    "DataSection",
    "HubSection",
    "ModelSection",
    "OutputSection",
    "PeftSection",
    "QuantizationSection",
    "Recipe",
    "RecipePlugins",
    "TrainingSection",
    "load_recipe",
    "parse_override",
    "resolve_plugins",
    "validate_recipe",
]
