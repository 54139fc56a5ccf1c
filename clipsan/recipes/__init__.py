"""The defense recipes, by the name users pass to ``--method``.

Importing this package is cheap (no torch): the command line reads the
recipes' configs (``clipsan.recipes.config``); ``build_recipe`` imports the
one recipe a run needs.
"""

from __future__ import annotations

from clipsan.recipes.config import RECIPE_CONFIGS, RecipeConfig

METHODS: tuple[str, ...] = tuple(RECIPE_CONFIGS)


def recipe_classes() -> dict:
    """Recipe class by method name (imports torch)."""
    from clipsan.recipes.abd.recipe import ABD
    from clipsan.recipes.cleanclip import CleanCLIP
    from clipsan.recipes.cleanerclip import CleanerCLIP
    from clipsan.recipes.ft import FineTune

    return {cls.name: cls for cls in (FineTune, CleanCLIP, CleanerCLIP, ABD)}


def build_recipe(config: RecipeConfig):
    """The recipe a config describes."""
    return recipe_classes()[config.method](config)
