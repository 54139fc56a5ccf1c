"""``clipsan calibrate TRUSTED...``: scan thresholds from models the user trusts, written as a calibration file.

Each trusted model is loaded once and scanned with seeds 0 .. --seeds - 1, as ``clipsan scan`` would
scan it (same probes, budget and seed handling: a session per seed); every signal's statistic is
kept per (family, architecture, input size), and each signal's threshold is derived by the lab's
rule (thresholds.CLEAN_FLOOR_FACTOR x the smallest statistic). With --reference (the base the
trusted models were fine-tuned from), reference-divergence is calibrated too. A trusted model that
cannot be read stops the call (exit 2): a calibration must rest on every model the user named.
"""

from __future__ import annotations

import gc
import os
import time
from collections import defaultdict

from clipsan.config.calibrate import CalibrateConfig
from clipsan.errors import UserError
from clipsan.jobs.scan import load_for_scan, open_session
from clipsan.jobs.training import Notes
from clipsan.reports import CalibrateReport
from clipsan.scan.calibration_file import Calibration, Entry, SignalCalibration, write_calibration
from clipsan.scan.session import Encoder, Subject
from clipsan.scan.signals import COLLAPSE, collapse_inversion, divergence_inversion

Key = tuple[str, str, int]  # family, arch, input side


def _statistics(subject: Subject, reference) -> dict[str, tuple[float, bool]]:
    """signal -> (statistic, inversion succeeded) of one model under one seed."""
    found = {}
    for name in COLLAPSE:
        inversion = collapse_inversion(subject, name)
        found[name] = (inversion.statistic, inversion.succeeded)
    if reference is not None:
        inversion = divergence_inversion(subject, Encoder(reference.model))
        found["reference-divergence"] = (inversion.statistic, inversion.succeeded)
    return found


def run_calibrate(config: CalibrateConfig, notes: Notes) -> CalibrateReport:
    """Scan every trusted model over the seeds; write config.out and return the report."""
    started = time.perf_counter()
    first = open_session(config.scan_config(0), notes)
    sessions = [first] + [open_session(config.scan_config(seed), lambda _m: None, reference=first.reference) for seed in range(1, config.seeds)]
    if not os.access(os.path.dirname(os.path.abspath(config.out)), os.W_OK):  # fail before the scans, not after
        raise UserError(f"{config.out}: cannot write (its folder is not writable)")
    found: dict[Key, dict[str, list[tuple[float, bool]]]] = defaultdict(lambda: defaultdict(list))
    models, scans = [], []
    for model in config.models:
        loaded = load_for_scan(first, model, notes)
        key = (loaded.model.family, loaded.arch, loaded.model.image_size)
        models.append({"model": str(loaded.path), "sha256": loaded.sha256, "family": key[0], "arch": key[1], "image_size": key[2]})
        for seed, session in enumerate(sessions):
            statistics = _statistics(Subject.of(session, loaded), session.reference)
            for name, value in statistics.items():
                found[key][name].append(value)
            scans.append({"model": str(loaded.path), "seed": seed, "statistics": {n: round(v, 6) if ok else None for n, (v, ok) in statistics.items()}})
            notes(f"{model} seed {seed}: " + ", ".join(f"{n} {v:.4f}" if ok else f"{n} no collapse" for n, (v, ok) in statistics.items()))
        del loaded
        gc.collect()
    entries = tuple(
        Entry(*key, {name: SignalCalibration.derive([v for v, ok in values if ok], sum(not ok for _, ok in values)) for name, values in signals.items()})
        for key, signals in found.items()
    )
    budget = first.budget
    probes = first.probes(entries[0].image_size)
    reference = None if first.reference is None else {"model": str(first.reference.path), "sha256": first.reference.sha256}
    calibration = Calibration(
        entries,
        {"probes": budget.probes, "steps": budget.steps, "batch_size": budget.batch_size},
        tuple(range(config.seeds)),
        {"source": probes.source, "data": probes.data},
        tuple(models),
        reference,
    )
    write_calibration(config.out, calibration)
    return CalibrateReport(out=str(config.out), calibration=calibration.to_json(), scans=scans, seconds=round(time.perf_counter() - started, 2))
