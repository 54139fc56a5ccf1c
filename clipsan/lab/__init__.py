"""The synthetic lab: the whole pipeline (train, poison, scan, purify, eval) on a generated world.

It drives the product as a user would, through ``clipsan`` processes; nothing
in the product imports it.
"""

from clipsan.lab.runner import LabOptions, run_lab
from clipsan.lab.tables import render_markdown

__all__ = ["LabOptions", "render_markdown", "run_lab"]
