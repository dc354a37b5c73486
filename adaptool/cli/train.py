"""``adaptool train RECIPE``: train an adapter from a recipe."""

from __future__ import annotations

from adaptool.cli.options import RecipeArg, SetOpt
from adaptool.cli.output import not_yet


def train_cli(recipe: RecipeArg, set_: SetOpt = None) -> None:
    """Train an adapter as RECIPE describes (the recipe is validated first)."""
    from adaptool.recipe import load_recipe

    load_recipe(recipe, set_ or [])
    not_yet("train", f"The recipe is valid: `adaptool check {recipe}` shows its data.")
