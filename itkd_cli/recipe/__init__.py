"""Recipes: pydantic schema + YAML loading with `extends:` and `--set` overrides."""

from itkd_cli.recipe.load import RecipeError, dump_yaml, load_recipe, recipe_from_dict
from itkd_cli.recipe.schema import Recipe

__all__ = ["Recipe", "RecipeError", "dump_yaml", "load_recipe", "recipe_from_dict"]
