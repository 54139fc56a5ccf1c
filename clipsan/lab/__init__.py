"""The synthetic lab: the whole pipeline (train, poison, scan, purify, eval) on a generated world.

It drives the product as a user would, through ``clipsan`` processes; nothing in the product
imports it. runner.py (run_lab: the stages in order), plan.py (every stage's flags), victims.py
(the attacks' calibrated settings), jobs.py (stages as processes), tables.py (lab.md), pareto.py,
probes.py (world probes for checks).
"""
