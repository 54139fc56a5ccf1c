"""The commands as jobs, one module per ``clipsan.api`` function.

training.py  the skeleton every training command runs on: runtime (once) -> inputs agreed by
             every process -> run directory -> config record -> train -> save
purify.py    a defense recipe on the skeleton
poison.py    the poisoning plan (and BadCLIP's patch) on the skeleton
craft.py     ABD's patch generator on the skeleton (``clipsan craft-adv``)
evaluate.py  zero-shot CA@k / ASR@k of several models
scan.py      the scan of several models, one loaded at a time
calibrate.py scan thresholds from the user's trusted models (a calibration file)
"""
