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

Verdict: ``backdoor`` if any signal that counts fires (exit 1), else
``clean`` (exit 0). Several models: clipsan.scan.batch. Thresholds and
calibration: clipsan/scan/thresholds.py, docs/scan-calibration.md.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from clipsan import strict_json
from clipsan.config import ScanConfig
from clipsan.engine.rundir import atomic_write_bytes
from clipsan.errors import UserError
from clipsan.reports import ScanReport
from clipsan.scan import artifacts
from clipsan.scan.inversion import GLOBAL, MASK, Family, Inversion, InversionSettings, invert
from clipsan.scan.objectives import clean_pairwise_cosine, collapse, divergence
from clipsan.scan.probes import Probes
from clipsan.scan.signals import alignment_signal, signal_entry
from clipsan.scan.target import name_target
from clipsan.scan.thresholds import threshold

SCHEMA_VERSION = 2  # 2: the batch keys (models[], errors[], summary) and the universal-perturbation signal
DECREE_SUCCESS = 0.99  # DECREE: a stamp "works" when (relative) mean pairwise cosine > 0.99
# A universal perturbation "works" at 0.9: backdoor triggers themselves collapse the lab's probes
# to 0.77-0.93 only, so at DECREE's 0.99 the inversion must overshoot the trigger (docs/scan-calibration.md).
PERTURBATION_SUCCESS = 0.9
DIVERGENCE_SUCCESS = 0.5  # mean (1 - cos) between suspect and reference on stamped probes


@dataclass(frozen=True)
class Budget:
    probes: int
    batch_size: int
    steps: int


BUDGETS = {
    "quick": Budget(probes=128, batch_size=32, steps=300),
    "full": Budget(probes=512, batch_size=64, steps=1000),
}


class _Encoder:
    """A frozen image encoder: eval mode, no parameter gradients, fp32 (see Session.precision)."""

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def _settings(budget: Budget, options: ScanConfig, success: float, family: Family = MASK) -> InversionSettings:
    return InversionSettings(steps=options.steps or budget.steps, batch_size=budget.batch_size, success=success, family=family)


def check_options(options: ScanConfig) -> Budget:
    """Refuse bad settings before any model is loaded; returns the budget."""
    if not options.models:
        raise UserError("scan: expected at least one MODEL")
    if options.budget not in BUDGETS:
        raise UserError(f"--budget {options.budget}: expected one of {', '.join(BUDGETS)}")
    for name in ("threshold", "divergence_threshold", "perturbation_threshold"):
        value = getattr(options, name)
        if value is not None and not 0 < value <= 1:
            raise UserError(f"--{name.replace('_', '-')} {value}: expected a fraction in (0, 1]")
    if options.alignment_threshold is not None and options.alignment_threshold <= 0:
        raise UserError(f"--alignment-threshold {options.alignment_threshold}: expected a positive ratio")
    for name in ("probes", "steps"):
        value = getattr(options, name)
        if value is not None and value < (2 if name == "probes" else 1):
            raise UserError(f"--{name} {value}: too small")
    return BUDGETS[options.budget]


@dataclass
class Session:
    """What every model of one `scan` call shares: settings, device, the reference, the probes."""

    options: ScanConfig
    budget: Budget
    device: torch.device
    precision: str  # always fp32: the precision the thresholds were calibrated in (clipsan.scan.batch)
    reference: object | None  # clipsan.checkpoint.LoadedModel of --reference
    probes: Callable[[int], Probes]  # input side -> probe images at that side (loaded once per side)
    progress: Callable[[str, int], object] = field(default=lambda description, total: contextlib.nullcontext())


def scan_model(session: Session, loaded, run_dir: Path, notes=lambda message: None) -> ScanReport:
    """Scan one loaded model; writes its artifacts and scan.json into run_dir and returns its report."""
    started = time.perf_counter()
    options, budget, device = session.options, session.budget, session.device
    suspect = _Encoder(loaded.model)
    size = loaded.model.image_size
    probes = session.probes(size)
    images = probes.images.to(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    label = Path(str(loaded.path)).name

    def run(signal: str, objective, settings: InversionSettings) -> Inversion:
        with session.progress(f"{label}: {signal}", settings.steps) as progress:
            return invert(objective, images, settings, options.seed, progress=progress)

    # (a) DECREE on the suspect's image encoder: the smallest collapsing mask.
    clean_cos = clean_pairwise_cosine(suspect, images)
    if not math.isfinite(clean_cos):  # finite weights can still overflow: nothing to invert, and no NaN in a report
        raise UserError(f"{loaded.path}: the image features of clean probes are not finite (NaN/inf): the weights overflow in float32")
    collapsed = collapse(suspect, clean_cos)
    decree = run("decree", collapsed, _settings(budget, options, DECREE_SUCCESS))
    decree_embeddings = suspect.embed(decree.stamp(images))
    decree_all = float(collapsed(decree.stamp(images[:256])))
    signals = [
        _inversion_signal(
            "decree",
            decree,
            threshold("decree", size, options.threshold),
            DECREE_SUCCESS,
            clean_cosine=round(clean_cos, 6),
            collapse_score=round(decree_all, 6),
        )
    ]
    inversions = {"decree": decree}

    # (b) The smallest universal additive perturbation (L-inf) that collapses the encoder:
    # whole-image triggers (blends, sinusoids) no small mask can express.
    global_settings = _settings(budget, options, PERTURBATION_SUCCESS, GLOBAL)
    perturbation = run("universal-perturbation", collapsed, global_settings)
    perturbation_all = float(collapsed(perturbation.stamp(images[:256])))
    signals.append(
        _inversion_signal(
            "universal-perturbation",
            perturbation,
            threshold("universal-perturbation", size, options.perturbation_threshold),
            PERTURBATION_SUCCESS,
            collapse_score=round(perturbation_all, 6),
        )
    )
    inversions["universal-perturbation"] = perturbation

    # (c) Where the suspect and the reference disagree.
    if session.reference is not None:
        reference = _Encoder(session.reference.model)
        clean_div = float(1 - (suspect.embed(images) * reference.embed(images)).sum(-1).mean())
        probe = run("reference-divergence", divergence(suspect, reference), _settings(budget, options, DIVERGENCE_SUCCESS))
        stamped = probe.stamp(images)
        probe_all = float(1 - (suspect.embed(stamped) * reference.embed(stamped)).sum(-1).mean())
        signals.append(
            _inversion_signal(
                "reference-divergence",
                probe,
                threshold("reference-divergence", size, options.divergence_threshold),
                DIVERGENCE_SUCCESS,
                clean_divergence=round(clean_div, 6),
                divergence_score=round(probe_all, 6),
            )
        )
        inversions["reference-divergence"] = probe

    # (d) The likely target, read from the strongest firing inversion's collapse point; and
    # whether that point sits on a caption (a backdoor's target) more than natural images do.
    fired = [s for s in signals if s["fired"]]
    source = min(fired, key=lambda s: s["statistic"] / s["threshold"])["name"] if fired else "decree"
    shown = inversions[source]
    embeddings = decree_embeddings if source == "decree" else suspect.embed(shown.stamp(images))
    target = name_target(loaded.model, F.normalize(embeddings.mean(dim=0), dim=0), probes.classnames, device, probe_embeddings=suspect.embed(images))
    target["from_signal"] = source
    signals.append(alignment_signal(target, shown.succeeded, threshold("target-alignment", size, options.alignment_threshold)))

    trigger = _save_artifacts(run_dir, inversions, probes)
    backdoor = any(s["fired"] and s["counted"] for s in signals)
    reference_loaded = session.reference
    report = ScanReport(
        model=str(loaded.path),
        sha256=loaded.sha256,
        **loaded.report_fields(),
        image_size=size,
        reference=None if reference_loaded is None else {"model": str(options.reference), "sha256": reference_loaded.sha256, "arch": reference_loaded.arch},
        verdict="backdoor" if backdoor else "clean",
        backdoor=backdoor,
        statistic=signals[0]["statistic"],
        threshold=signals[0]["threshold"],
        fired_signals=[s["name"] for s in signals if s["fired"] and s["counted"]],
        signals=signals,
        target=target,
        trigger=trigger,
        probes={
            "source": probes.source,
            "synthetic": probes.synthetic,
            "data": probes.data,
            "count": int(images.shape[0]),
            "skipped": probes.skipped,
            "description": probes.describe(),
        },
        budget=options.budget,
        seed=options.seed,
        device=str(device),
        precision=session.precision,
        run_dir=str(run_dir),
        started_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        seconds=round(time.perf_counter() - started, 2),
    )
    write_json(run_dir / "scan.json", report.to_json())
    return report


def _inversion_signal(name: str, inversion: Inversion, limit, success: float, **details) -> dict:
    """A signal whose statistic is an inversion's size: it fires below the threshold."""
    return signal_entry(name, inversion.statistic, limit, "below", inversion.succeeded, steps=inversion.steps, success_score=success, **details)


def write_json(path: Path, document: dict) -> None:
    atomic_write_bytes(path, (strict_json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def _save_artifacts(run_dir: Path, inversions: dict[str, Inversion], probes: Probes) -> dict:
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
        history = run_dir / f"{stem}-history.json"  # how lambda, score and size moved: for debugging a verdict
        atomic_write_bytes(history, (strict_json.dumps(inversion.history, indent=1) + "\n").encode())
        paths[name] = {key: str(path) for key, path in files.items()}
    return {**paths["decree"], "pl1": round(inversions["decree"].statistic, 6), "others": {k: v for k, v in paths.items() if k != "decree"}}
