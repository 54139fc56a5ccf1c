"""One model's scan: its signals in order, the likely target, the inverted triggers as PNGs, the report.

Verdict: ``backdoor`` if any signal that counts fires (exit 1), else ``clean`` (exit 0). The report
also says which calibration entry applied (--calibration) and warns when the verdict rests on an
extrapolated threshold.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

import torch

from clipsan.atomic import write_errors, write_json
from clipsan.reports import ScanReport
from clipsan.scan import artifacts
from clipsan.scan.evidence import fired, gather
from clipsan.scan.inversion import Inversion
from clipsan.scan.probes import Probes
from clipsan.scan.session import Session, Subject
from clipsan.scan.thresholds import extrapolation_warning


def scan_model(session: Session, loaded, run_dir: Path) -> ScanReport:
    """Scan one loaded model; writes its artifacts and scan.json into run_dir and returns its report."""
    started = time.perf_counter()
    subject = Subject.of(session, loaded)
    with write_errors(run_dir):  # before the signals: a run dir that cannot be written fails at once
        run_dir.mkdir(parents=True, exist_ok=True)
    evidence = gather(subject)
    trigger = save_artifacts(run_dir, evidence.inversions, subject.probes)
    report = assemble_report(subject, evidence.signals, evidence.target, trigger, run_dir, time.perf_counter() - started)
    write_json(run_dir / "scan.json", report.to_json())
    return report


def assemble_report(subject: Subject, signals: list[dict], target: dict, trigger: dict, run_dir: Path, seconds: float) -> ScanReport:
    session, loaded, probes = subject.session, subject.loaded, subject.probes
    config, reference = session.config, session.reference
    evidence = fired(signals)
    backdoor = bool(evidence)
    calibration = None
    if session.calibration is not None:
        calibration = session.calibration.usage(subject.family, subject.arch, subject.size, session.budget, probes.source, probes.data)
    warning = extrapolation_warning(signals, subject.size)
    return ScanReport(
        model=str(loaded.path),
        sha256=loaded.sha256,
        **loaded.report_fields(),
        image_size=subject.size,
        reference=None if reference is None else {"model": str(config.reference), "sha256": reference.sha256, "arch": reference.arch},
        verdict="backdoor" if backdoor else "clean",
        backdoor=backdoor,
        statistic=signals[0]["statistic"],
        threshold=signals[0]["threshold"],
        fired_signals=evidence,
        signals=signals,
        calibration=calibration,
        warnings=[warning] if warning else [],
        target=target,
        trigger=trigger,
        probes={
            "source": probes.source,
            "synthetic": probes.synthetic,
            "data": probes.data,
            "count": int(subject.images.shape[0]),
            "skipped": probes.skipped,
            "description": probes.describe(),
        },
        budget=config.budget,
        steps=session.budget.steps,
        seed=config.seed,
        device=str(session.rt.device),
        precision=session.rt.precision,
        run_dir=str(run_dir),
        started_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        seconds=round(seconds, 2),
    )


def save_artifacts(run_dir: Path, inversions: dict[str, Inversion], probes: Probes) -> dict:
    """PNG files per inversion; returns the report's `trigger` entry (paths of the decree ones)."""
    paths = {}
    for name, inversion in inversions.items():
        stem = "trigger" if name == "decree" else f"{name}-trigger"
        files = {"png": run_dir / f"{stem}.png", "mask_png": run_dir / f"{stem}-mask.png", "examples_png": run_dir / f"{stem}-examples.png"}
        # A global perturbation's amplitude is faint everywhere: show its direction (2p - 1) opaque.
        alpha = torch.ones_like(inversion.mask) if inversion.family.uniform else inversion.mask
        artifacts.save_trigger_png(alpha, inversion.pattern, files["png"])
        artifacts.save_mask_png(inversion.mask, files["mask_png"])
        clean = probes.images[:8]
        artifacts.save_examples_png(clean, inversion.stamp(clean), files["examples_png"])
        # how lambda, score and size moved: for debugging a verdict
        write_json(run_dir / f"{stem}-history.json", inversion.history, indent=1)
        paths[name] = {key: str(path) for key, path in files.items()}
    return {**paths["decree"], "pl1": round(inversions["decree"].statistic, 6), "others": {k: v for k, v in paths.items() if k != "decree"}}
