"""The defense recipes, built from their configs (``clipsan.config.recipes``).

Importing this package is cheap (no torch); ``build_recipe`` imports the one recipe a run needs.
A recipe's name is its config's ``method`` (what users pass to ``--method``).
"""

from __future__ import annotations

from clipsan.config.recipes import ABDConfig, RecipeConfig


def build_recipe(config: RecipeConfig):
    """The recipe a config describes (imports torch)."""
    from clipsan.recipes.abd.recipe import ABD, ABDAlign
    from clipsan.recipes.cleanclip import CleanCLIP
    from clipsan.recipes.cleanerclip import CleanerCLIP
    from clipsan.recipes.ft import FineTune
    from clipsan.recipes.par import PAR

    if isinstance(config, ABDConfig):
        return ABDAlign(config) if config.objective == "align" else ABD(config)
    recipe = next(cls for cls in (FineTune, CleanCLIP, CleanerCLIP, PAR) if type(config) is cls.config_type)
    return recipe(config)
