"""The purification recipes, by the name users pass to ``--method``."""

from __future__ import annotations

from clipsan.recipes.abd import ABD
from clipsan.recipes.base import Recipe
from clipsan.recipes.cleanclip import CleanCLIP
from clipsan.recipes.cleanerclip import CleanerCLIP
from clipsan.recipes.ft import FineTune

RECIPES: dict[str, type[Recipe]] = {cls.name: cls for cls in (FineTune, CleanCLIP, CleanerCLIP, ABD)}
