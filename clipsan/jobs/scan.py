"""``clipsan scan MODEL...``: several checkpoints in one call, one loaded at a time, one report.

A MODEL that cannot be read (missing, not a checkpoint, unknown architecture, a
size the reference does not take) becomes an entry of the report's ``errors``
and the others are still scanned. Settings, --data and --reference are checked
before any MODEL is read: a mistake there is the whole call's (exit 2, nothing
scanned).
"""

from __future__ import annotations

import gc
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from clipsan import __version__
from clipsan.atomic import write_json
from clipsan.config import ScanConfig
from clipsan.engine.rundir import default_run_dir, versions
from clipsan.errors import UserError
from clipsan.jobs.training import Notes
from clipsan.reports import ScanBatchReport, ScanReport
from clipsan.scan import SCHEMA_VERSION
from clipsan.scan.calibration_file import Calibration, read_calibration
from clipsan.scan.model_scan import scan_model
from clipsan.scan.probes import Probes, load_probes
from clipsan.scan.session import Session
from clipsan.scan.thresholds import Thresholds


def _model_dir(run_dir: Path, index: int, count: int, model: str) -> Path:
    """The run dir itself for one MODEL (schema 1's layout), else NN-<file name> inside it."""
    if count == 1:
        return run_dir
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.removeprefix("local-dir:")).name) or "model"
    return run_dir / f"{index + 1:0{len(str(count))}d}-{name}"


@contextmanager
def _progress_bar(description: str, total: int):
    """A tqdm bar on stderr for one signal's optimizer steps; yields the inversion's progress callback."""
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True) as bar:

        def update(step: int, best: float | None) -> None:
            bar.update(step - bar.n)
            if best is not None:
                bar.set_postfix_str(f"smallest {best:.4f}", refresh=False)

        yield update


def thresholds_of(config: ScanConfig, calibration: Calibration | None) -> Thresholds:
    """Where the call's thresholds come from: its flags, its calibration file, the lab's table."""
    given = {"decree": config.threshold, "universal-perturbation": config.perturbation_threshold}
    given |= {"reference-divergence": config.divergence_threshold, "target-alignment": config.alignment_threshold}
    return Thresholds({name: value for name, value in given.items() if value is not None}, calibration)


def open_session(config: ScanConfig, notes: Notes, reference=None) -> Session:
    """What every MODEL of a call shares; refuses a bad --calibration, --reference or --data before
    any MODEL is read. ``reference``: an already loaded --reference (shared by several sessions)."""
    from clipsan.checkpoints import load_model
    from clipsan.engine.runtime import local_runtime

    calibration = read_calibration(config.calibration) if config.calibration else None
    if calibration is not None:
        notes(f"calibration {config.calibration}: {calibration.describe()}")
    budget = config.effective_budget
    # Every statistic is computed in fp32 (TF32 matmuls on CUDA), the precision the thresholds
    # were calibrated in: under bf16 the inversion's score and PL1 move by percents.
    rt = local_runtime(config.device, "fp32")
    if config.precision in ("bf16", "fp16"):
        notes(f"--precision {config.precision}: scan computes in fp32, the precision its thresholds were calibrated in")
    if config.reference and reference is None:
        reference = load_model(config.reference, arch=config.reference_arch, device=rt.device)
        reference.announce(notes, role="reference")
    cache: dict[int, Probes] = {}

    def probes(size: int) -> Probes:
        if size not in cache:
            reading = {"max_image_pixels": config.max_image_pixels, "allow_outside_root": config.allow_outside_root}
            cache[size] = load_probes(config.data, budget.probes, size, config.seed, **reading)
            notes(f"probes: {cache[size].describe()}")
        return cache[size]

    if config.data is not None:
        probes(reference.model.image_size if reference is not None else 32)  # a bad --data fails the call before any MODEL is read
    session = Session(config, budget, rt, reference, probes, thresholds_of(config, calibration), calibration, notes=notes)
    if config.progress:
        session.progress = _progress_bar
    return session


def load_for_scan(session: Session, model: str, notes: Notes):
    """MODEL, announced; refused (UserError) if the session's reference takes another input size."""
    from clipsan.checkpoints import load_model

    loaded = load_model(model, arch=session.config.arch, device=session.rt.device)
    loaded.announce(notes)
    calibration = session.calibration
    if calibration is not None and calibration.entry(loaded.model.family, loaded.arch, loaded.model.image_size) is None:
        notes(f"{model}: {calibration.path} has no entry for {loaded.model.family} {loaded.arch} {loaded.model.image_size} px: the lab's thresholds apply")
    reference = session.reference
    if reference is not None and reference.model.image_size != loaded.model.image_size:
        raise UserError(
            f"{model}: takes {loaded.model.image_size} px images, --reference {session.config.reference} takes "
            f"{reference.model.image_size} px; the reference must be the same kind of model"
        )
    return loaded


def run_scan(config: ScanConfig, notes: Notes) -> ScanBatchReport:
    """Scan every MODEL of `config`; writes RUN_DIR/scan.json (the report) and returns it."""
    started = time.perf_counter()
    session = open_session(config, notes)
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir("scan")
    rows: list[ScanReport] = []
    errors: list[dict[str, str]] = []
    count = len(config.models)
    for index, model in enumerate(config.models):
        if count > 1:
            notes(f"[{index + 1}/{count}] {model}")
        try:
            loaded = load_for_scan(session, model, notes)
        except UserError as err:
            if count > 1:
                notes(f"{err}")  # reported and skipped; the others are still scanned
            errors.append({"model": model, "error": str(err)})
            continue
        row = scan_model(session, loaded, _model_dir(run_dir, index, count, model))
        del loaded
        gc.collect()  # one model in memory at a time
        if count > 1:
            notes(f"{model}: {row.verdict} ({row.seconds:.0f} s)")
        rows.append(row)
    if not rows:
        raise UserError(errors[0]["error"] if count == 1 else f"none of the {count} models could be read")
    flagged = sum(row.backdoor for row in rows)
    report = ScanBatchReport(
        schema_version=SCHEMA_VERSION,
        tool={"name": "clipsan", "version": __version__},
        verdict="backdoor" if flagged else ("incomplete" if errors else "clean"),
        backdoor=bool(flagged),
        summary={"models": count, "scanned": len(rows), "flagged": flagged, "errors": len(errors)},
        models=rows,
        errors=errors,
        run_dir=str(run_dir),
        seconds=round(time.perf_counter() - started, 2),
    )
    write_json(run_dir / "scan.json", report.to_json())
    write_json(run_dir / "config.json", {"command": "scan", "options": asdict(config), "versions": versions()})
    return report
