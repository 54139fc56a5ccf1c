"""`clipsan scan`: trigger-agnostic backdoor evidence for a CLIP checkpoint.

Signals (each with its statistic, threshold and verdict in the report):

* ``decree`` - DECREE-style trigger inversion on the image encoder: the smallest
  mask (as a fraction of the image, PL1) whose stamp collapses the embeddings
  of clean probes. A backdoor is a small trigger that does exactly that, so a
  PL1 below the threshold is evidence.
* ``reference-divergence`` (with ``--reference``) - the same inversion, but the
  stamp must make the suspect's features of the stamped images depart from the
  reference encoder's features of them; a small mask that does is the
  behaviour ABD's backdoor loss looks for.
* ``target-alignment`` - the likely target is named by matching the point the
  inverted trigger collapses images to against class names and the noun bank
  ("a photo of a {}."). A backdoor's collapse point is its target's caption
  embedding, so it matches a text as well as natural images do; the collapse
  point of a trained clean encoder's (adversarial) mask matches none.
  Statistic: that best similarity / the 95th percentile of clean probes' best
  similarities. Supporting evidence only (an undertrained clean model scores
  as high as victims) unless --alignment-threshold is given.

Verdict: ``backdoor`` if any signal that counts fires (exit 1), else
``clean`` (exit 0). Thresholds and calibration: clipsan/scan/thresholds.py,
docs/scan-calibration.md.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clipsan import __version__, strict_json
from clipsan.config import ScanConfig
from clipsan.engine.rundir import atomic_write_bytes, default_run_dir
from clipsan.errors import UserError
from clipsan.reports import ScanReport
from clipsan.scan import artifacts
from clipsan.scan.inversion import Inversion, InversionSettings, invert
from clipsan.scan.objectives import clean_pairwise_cosine, collapse, divergence
from clipsan.scan.probes import Probes, load_probes
from clipsan.scan.target import name_target
from clipsan.scan.thresholds import Threshold, alignment_threshold, decree_threshold, divergence_threshold

SCHEMA_VERSION = 1
DECREE_SUCCESS = 0.99  # DECREE: a stamp "works" when (relative) mean pairwise cosine > 0.99
DIVERGENCE_SUCCESS = 0.5  # mean (1 - cos) between suspect and reference on stamped probes
MIN_PROBE_SIMILARITY = 0.05  # target-alignment guards, see _alignment_signal
MIN_TARGET_MARGIN = 0.05


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
    """A frozen image encoder: eval mode, no parameter gradients, fp32 (see scan_model)."""

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def _settings(budget: Budget, options: ScanConfig, success: float) -> InversionSettings:
    return InversionSettings(steps=options.steps or budget.steps, batch_size=budget.batch_size, success=success)


def _check_options(options: ScanConfig) -> Budget:
    if options.budget not in BUDGETS:
        raise UserError(f"--budget {options.budget}: expected one of {', '.join(BUDGETS)}")
    for name in ("threshold", "divergence_threshold"):
        value = getattr(options, name)
        if value is not None and not 0 < value <= 1:
            raise UserError(f"--{name.replace('_', '-')} {value}: expected a fraction of the image in (0, 1]")
    if options.alignment_threshold is not None and options.alignment_threshold <= 0:
        raise UserError(f"--alignment-threshold {options.alignment_threshold}: expected a positive ratio")
    for name in ("probes", "steps"):
        value = getattr(options, name)
        if value is not None and value < (2 if name == "probes" else 1):
            raise UserError(f"--{name} {value}: too small")
    return BUDGETS[options.budget]


def _signal(name: str, statistic: float, threshold: Threshold, fires_when: str, succeeded: bool, eligible: bool = True, **details) -> dict:
    """One signal's entry; it fires when its inversion succeeded, any extra condition holds
    (`eligible`) and the statistic is on the backdoor side of the threshold."""
    crossed = statistic < threshold.value if fires_when == "below" else statistic >= threshold.value
    return {
        "name": name,
        "statistic": round(statistic, 6),
        "threshold": threshold.value,
        "threshold_source": threshold.source,
        "fires_when": fires_when,
        "fired": bool(succeeded and eligible and crossed),
        "counted": threshold.counts,
        "inversion_succeeded": succeeded,
        **details,
    }


def _alignment_signal(target: dict, succeeded: bool, threshold: Threshold) -> dict:
    """How well the collapse point matches its best caption, relative to natural probe images.

    Two guards: natural images must match some caption at all (probe similarity >=
    MIN_PROBE_SIMILARITY; a random-init model's do not, and the ratio would be noise), and the
    match must be specific (the best candidate ahead of the runner-up by MIN_TARGET_MARGIN; an
    undertrained encoder's collapse point is about equally close to many captions).
    """
    candidates = [c for c in target["candidates"] if c["source"] == target["source"]]
    margin = candidates[0]["similarity"] - candidates[1]["similarity"] if len(candidates) > 1 else 1.0
    probe = target["probe_similarity"]
    ratio = target["similarity"] / probe if probe is not None and probe >= MIN_PROBE_SIMILARITY else 0.0
    specific = margin >= MIN_TARGET_MARGIN
    signal = _signal(
        "target-alignment",
        ratio,
        threshold,
        "above",
        succeeded,
        eligible=specific,
        from_signal=target["from_signal"],
        target_similarity=target["similarity"],
        probe_similarity=probe,
        target_margin=round(margin, 6),
        min_target_margin=MIN_TARGET_MARGIN,
    )
    return signal


def scan_model(options: ScanConfig, notes=lambda message: None) -> ScanReport:
    """Scan options.model; writes the run dir and returns the report (see docs for its keys)."""
    from clipsan.checkpoint import load_model
    from clipsan.engine.runtime import local_runtime

    started = time.perf_counter()
    budget = _check_options(options)
    device = local_runtime(options.device, options.precision).device
    # Every statistic is computed in fp32 (TF32 matmuls on CUDA), the precision the thresholds
    # were calibrated in: under bf16 the inversion's score and PL1 move by percents.
    if options.precision in ("bf16", "fp16"):
        notes(f"--precision {options.precision}: scan computes in fp32, the precision its thresholds were calibrated in")
    precision = "fp32"

    loaded = load_model(options.model, arch=options.arch, device=device)
    loaded.announce(notes)
    suspect = _Encoder(loaded.model)
    size = loaded.model.image_size
    reference_loaded = None
    if options.reference:
        reference_loaded = load_model(options.reference, arch=options.reference_arch, device=device)
        reference_loaded.announce(notes, role="reference")
        if reference_loaded.model.image_size != size:
            raise UserError(
                f"{options.reference}: --reference takes {reference_loaded.model.image_size} px images, "
                f"MODEL takes {size} px; the reference must be the same kind of model"
            )

    reading = {"max_image_pixels": options.max_image_pixels, "allow_outside_root": options.allow_outside_root}
    probes = load_probes(options.data, options.probes or budget.probes, size, options.seed, **reading)
    notes(f"probes: {probes.describe()}")
    images = probes.images.to(device)
    run_dir = Path(options.run_dir) if options.run_dir else default_run_dir("scan")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: --run-dir exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)

    # (a) DECREE on the suspect's image encoder.
    clean_cos = clean_pairwise_cosine(suspect, images)
    if not math.isfinite(clean_cos):  # finite weights can still overflow: nothing to invert, and no NaN in a report
        raise UserError(f"{options.model}: the image features of clean probes are not finite (NaN/inf): the weights overflow in float32")
    decree = invert(collapse(suspect, clean_cos), images, _settings(budget, options, DECREE_SUCCESS), options.seed)
    decree_embeddings = suspect.embed(decree.stamp(images))
    decree_all = float(collapse(suspect, clean_cos)(decree.stamp(images[:256])))
    signals = [
        _signal(
            "decree",
            decree.pl1,
            decree_threshold(size, options.threshold),
            "below",
            decree.succeeded,
            steps=decree.steps,
            clean_cosine=round(clean_cos, 6),
            collapse_score=round(decree_all, 6),
            success_score=DECREE_SUCCESS,
        )
    ]
    inversions = {"decree": decree}

    # (b) Where the suspect and the reference disagree.
    if reference_loaded is not None:
        reference = _Encoder(reference_loaded.model)
        clean_div = float(1 - (suspect.embed(images) * reference.embed(images)).sum(-1).mean())
        probe = invert(divergence(suspect, reference), images, _settings(budget, options, DIVERGENCE_SUCCESS), options.seed)
        stamped = probe.stamp(images)
        probe_all = float(1 - (suspect.embed(stamped) * reference.embed(stamped)).sum(-1).mean())
        signals.append(
            _signal(
                "reference-divergence",
                probe.pl1,
                divergence_threshold(size, options.divergence_threshold),
                "below",
                probe.succeeded,
                steps=probe.steps,
                clean_divergence=round(clean_div, 6),
                divergence_score=round(probe_all, 6),
                success_score=DIVERGENCE_SUCCESS,
            )
        )
        inversions["reference-divergence"] = probe

    # (c) The likely target, read from the strongest firing inversion's collapse point; and
    # whether that point sits on a caption (a backdoor's target) more than natural images do.
    fired = [s for s in signals if s["fired"]]
    source = min(fired, key=lambda s: s["statistic"] / s["threshold"])["name"] if fired else "decree"
    shown = inversions[source]
    embeddings = decree_embeddings if source == "decree" else suspect.embed(shown.stamp(images))
    target = name_target(loaded.model, F.normalize(embeddings.mean(dim=0), dim=0), probes.classnames, device, probe_embeddings=suspect.embed(images))
    target["from_signal"] = source
    signals.append(_alignment_signal(target, shown.succeeded, alignment_threshold(size, options.alignment_threshold)))

    trigger = _save_artifacts(run_dir, inversions, probes)
    backdoor = any(s["fired"] and s["counted"] for s in signals)
    report = ScanReport(
        **{
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "clipsan", "version": __version__},
            "model": str(options.model),
            "sha256": loaded.sha256,
            **loaded.report_fields(),
            "image_size": size,
            "reference": None
            if reference_loaded is None
            else {"model": str(options.reference), "sha256": reference_loaded.sha256, "arch": reference_loaded.arch},
            "verdict": "backdoor" if backdoor else "clean",
            "backdoor": backdoor,
            "statistic": signals[0]["statistic"],
            "threshold": signals[0]["threshold"],
            "fired_signals": [s["name"] for s in signals if s["fired"] and s["counted"]],
            "signals": signals,
            "target": target,
            "trigger": trigger,
            "probes": {
                "source": probes.source,
                "synthetic": probes.synthetic,
                "data": probes.data,
                "count": int(images.shape[0]),
                "skipped": probes.skipped,
                "description": probes.describe(),
            },
            "budget": options.budget,
            "seed": options.seed,
            "device": str(device),
            "precision": precision,
            "run_dir": str(run_dir),
            "started_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    atomic_write_bytes(run_dir / "scan.json", (strict_json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(
        run_dir / "config.json",
        (strict_json.dumps({"command": "scan", "options": asdict(options), "versions": _versions()}, indent=2, sort_keys=True) + "\n").encode(),
    )
    return report


def _versions() -> dict:
    import open_clip

    return {"clipsan": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__}


def _save_artifacts(run_dir: Path, inversions: dict[str, Inversion], probes: Probes) -> dict:
    """PNG files per inversion; returns the report's `trigger` entry (paths of the decree ones)."""
    paths = {}
    for name, inversion in inversions.items():
        stem = "trigger" if name == "decree" else f"{name}-trigger"
        files = {"png": run_dir / f"{stem}.png", "mask_png": run_dir / f"{stem}-mask.png", "examples_png": run_dir / f"{stem}-examples.png"}
        artifacts.save_trigger_png(inversion.mask, inversion.pattern, files["png"])
        artifacts.save_mask_png(inversion.mask, files["mask_png"])
        clean = probes.images[:8]
        artifacts.save_examples_png(clean, inversion.stamp(clean), files["examples_png"])
        history = run_dir / f"{stem}-history.json"  # how lambda, score and PL1 moved: for debugging a verdict
        atomic_write_bytes(history, (strict_json.dumps(inversion.history, indent=1) + "\n").encode())
        paths[name] = {key: str(path) for key, path in files.items()}
    return {**paths["decree"], "pl1": round(inversions["decree"].pl1, 6), "others": {k: v for k, v in paths.items() if k != "decree"}}
