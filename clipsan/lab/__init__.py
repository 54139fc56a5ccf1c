"""The synthetic lab: the whole pipeline (train, poison, scan, purify, eval) on a generated world.

It drives the product as a user would, through ``clipsan`` processes; nothing
in the product imports it.
"""

from clipsan.lab.runner import LabOptions, render_markdown, run_lab

__all__ = ["LabOptions", "render_markdown", "run_lab"]
