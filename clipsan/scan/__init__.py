"""`clipsan scan`: trigger-agnostic backdoor evidence for CLIP checkpoints.

Signals (each with its statistic, threshold and verdict in the report):

* ``decree`` - DECREE-style trigger inversion on the image encoder: the smallest
  mask (as a fraction of the image, PL1) whose stamp collapses the embeddings
  of clean probes. A backdoor is a small trigger that does exactly that, so a
  PL1 below the threshold is evidence. Blind to whole-image triggers.
* ``universal-perturbation`` - the smallest universal additive perturbation
  (its L-inf budget) that collapses the same embeddings. A whole-image trigger
  (blend, sinusoid, noise) is a faint change everywhere; a backdoored encoder
  answers one with far less amplitude than a clean encoder needs.
* ``reference-divergence`` (with ``--reference``) - mask inversion again, but the
  stamp must make the suspect's features of the stamped images depart from the
  reference encoder's features of them; a small mask that does is the
  behaviour ABD's backdoor loss looks for.
* ``target-alignment`` - the likely target is named by matching the point the
  strongest inverted trigger collapses images to against class names and the
  noun bank ("a photo of a {}."). A backdoor's collapse point is its target's
  caption embedding, so it matches a text as well as natural images do.
  Statistic: that best similarity / the 95th percentile of clean probes' best
  similarities. Supporting evidence only (an undertrained clean model scores
  as high as victims) unless --alignment-threshold is given.

With ``--reference``, decree and universal-perturbation also run on the reference (once per call)
and are judged by the ratio suspect / reference instead of an absolute threshold (the relative
rule: signals.py). ``--calibration FILE`` takes the absolute thresholds from the user's own trusted
models (``clipsan calibrate``). Every threshold names its source.

Verdict: ``backdoor`` if any signal that counts fires (exit 1), else
``clean`` (exit 0). Thresholds and calibration: clipsan/scan/thresholds.py,
docs/scan-calibration.md.

session.py      what one call shares; the model under scan (Subject)
signals.py      one function per signal: its inversion and its report entry
model_scan.py   one model's scan and report
inversion.py    the inversion optimizer (mask and global families); objectives.py: what it optimises
thresholds.py   every threshold, its value and its source (lab, user flag, calibration file, relative)
calibration_file.py  the calibration file clipsan calibrate writes and scan --calibration reads
target.py       naming the likely target; probes.py; artifacts.py (PNGs); sarif.py
Several models in one call: clipsan.jobs.scan; calibration from trusted models: clipsan.jobs.calibrate.
"""

# 2: the batch keys (models[], errors[], summary) and the universal-perturbation signal
# 3: the relative rule (signals[].rule, reference_statistic, ratio, ratio_threshold...), calibration, warnings[],
#    threshold sources renamed (lab-32px, extrapolated-from-64px, user:FLAG, user:FILE, reference-relative)
SCHEMA_VERSION = 3
