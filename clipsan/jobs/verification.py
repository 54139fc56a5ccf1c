"""purify's backdoor check (issue 25): the scan's signals, by the scan's own code
(``clipsan.scan.evidence``), on the input model, on the output and - with ``--until-clean`` - at every
epoch end (and every ``--verify-every`` steps), with the held-out images as probes; each check beside
the held-out retrieval.

A check *passes* when no counted signal fires and the held-out R@1 (the mean of image->text and
text->image) is within ``--max-utility-drop`` of the input's. ``--until-clean`` stops training at the
first check that passes; ``--until-clean`` and ``--require-clean`` exit 1 when the written model does
not pass. Verdicts: ``removed`` (a counted signal fired on the input, none on the output), ``remains``,
``none-before`` (nothing fired on the input: nothing to stop on, and nothing proved) and ``not-run``.

The checks' history goes to RUN_DIR/verification.json (and verification.png); each check during training is also on its
step's metrics.jsonl line (``verification``) and in the checkpoint written after it, so a resumed run
reports the checks made before it was interrupted.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsan.atomic import write_json
from clipsan.config import EvidenceConfig, ScanConfig
from clipsan.config.evidence import MIN_VERIFY_PROBES
from clipsan.data.holdout import HeldOutSplit
from clipsan.engine.loop import Measuring, TrainResult
from clipsan.engine.runtime import Runtime
from clipsan.errors import UserError
from clipsan.evaluation.retrieval import Retrieval
from clipsan.jobs.checks_chart import save_checks_png
from clipsan.scan.evidence import fired, in_memory
from clipsan.scan.prior import ScannedModel, read_scan_report
from clipsan.scan.probes import Probes, dataset_probes
from clipsan.scan.session import Session
from clipsan.scan.thresholds import STATISTIC_NAMES, lab_threshold

REMOVED, REMAINS, NONE_BEFORE, NOT_RUN = "removed", "remains", "none-before", "not-run"
HISTORY_FILE, CHART_FILE = "verification.json", "verification.png"
NONE_BEFORE_TEXT = (
    "no counted signal fired on the input model: the scan sees no backdoor there, so this purification proves nothing about a backdoor the scan cannot see"
)


def _shown(value: Any, most: int = 60) -> str:
    """A value read from an untrusted report, as a message may quote it (not a megabyte of it)."""
    text = str(value)
    return text if len(text) <= most else text[:most] + "..."


def mean_r1(recalls: dict[str, dict[str, float | None]]) -> float | None:
    """The utility a check guards: the mean of image->text and text->image R@1 (None if either is)."""
    values = [recalls[direction]["1"] for direction in ("i2t", "t2i")]
    return None if any(v is None for v in values) else round(sum(values) / 2, 6)


@dataclass
class Check:
    """One look at the model: the scan's signal entries and the held-out retrieval, at a training step."""

    step: int  # 0: the input model
    epoch: float
    retrieval: dict[str, dict[str, float | None]]  # {"i2t": {"1", "5"}, "t2i": {...}}
    signals: list[dict[str, Any]]
    target: str | None  # the likely target the scan names
    passed: bool | None = None  # no counted signal fires and R@1 within the guard (None for the input)
    source: str = "measured"  # or "scan-report": the input's signals read from --scan-report

    @property
    def fired(self) -> list[str]:
        return fired(self.signals)

    @property
    def r1(self) -> float | None:
        return mean_r1(self.retrieval)

    def record(self) -> dict[str, Any]:
        """What metrics.jsonl, the checkpoint and verification.json keep of it."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "source": self.source,
            "retrieval": self.retrieval,
            "r1": self.r1,
            "fired": self.fired,
            "passed": self.passed,
            "target": self.target,
            "signals": self.signals,
        }

    @classmethod
    def of_record(cls, record: dict[str, Any], step: int, epoch: float) -> Check:
        return cls(step, epoch, record["retrieval"], record["signals"], record["target"], record["passed"], record["source"])


@dataclass
class Verification:
    """The checks of one purify run, from its settings to its report."""

    config: EvidenceConfig
    seed: int
    rt: Runtime
    model_path: str
    probes: Probes | None = None  # None: not run (``reason`` says why)
    reason: str | None = None
    prior: ScannedModel | None = None  # the input's evidence from --scan-report
    before: Check | None = None
    checks: list[Check] = field(default_factory=list)  # during training, in order (a resumed run's earlier ones too)
    after: Check | None = None
    stopped: Check | None = None  # the check training stopped at (--until-clean)
    ended_early: bool = False  # it was before the schedule's last step
    seconds: float = 0.0  # spent in the scan's signals

    # --- before training -------------------------------------------------------------------

    @classmethod
    def plan(cls, config: EvidenceConfig, seed: int, split: HeldOutSplit, loaded, data: str, rt: Runtime) -> Verification:
        """The checks this run makes: probes drawn from the held-out pairs, --scan-report read and
        matched. A check that was asked for (--until-clean, --require-clean) and cannot run is refused."""
        verification = cls(config, seed, rt, str(loaded.path))
        if not config.verifies:
            verification.reason = "--verify-budget off"
            return verification
        required = "--until-clean" if config.until_clean else "--require-clean" if config.require_clean else None
        if split.pairs < MIN_VERIFY_PROBES:
            verification.reason = f"{split.pairs} held-out pairs: the scan's signals need at least {MIN_VERIFY_PROBES} held-out images as probes (--holdout)"
        else:
            try:
                probes = dataset_probes(split.held, "captions", data, None, config.budget.probes, loaded.model.image_size, seed)
            except UserError:  # fewer than 2 readable images
                probes = None
            count = 0 if probes is None else len(probes.images)
            if count < MIN_VERIFY_PROBES:
                verification.reason = f"{count} readable held-out images: the scan's signals need at least {MIN_VERIFY_PROBES} as probes"
            else:
                verification.probes = probes
        if verification.probes is None:
            if required:
                raise UserError(f"{required}: {verification.reason}")
            return verification
        if config.scan_report is not None:
            verification.prior = verification._matching_row(read_scan_report(config.scan_report), loaded)
        return verification

    @property
    def runs(self) -> bool:
        return self.probes is not None

    def record(self) -> dict[str, Any]:
        """config.json's inputs.verification: what decides the checks and when training stops (a resumed run must agree)."""
        config = self.config
        settings = {
            "budget": config.verify_budget,
            "until_clean": config.until_clean,
            "every": config.verify_every,
            "max_utility_drop": config.max_utility_drop,
        }
        if not self.runs:
            return {**settings, "probes": 0}
        report = None if config.scan_report is None else hashlib.sha256(Path(config.scan_report).read_bytes()).hexdigest()
        return {**settings, "probes": len(self.probes.images), "steps": config.budget.steps, "scan_report_sha256": report}

    def _matching_row(self, rows: list[ScannedModel], loaded) -> ScannedModel:
        """The row of --scan-report for MODEL, if its settings are this run's; refused in one line otherwise."""
        path = self.config.scan_report
        row = next((r for r in rows if r.sha256 == loaded.sha256), None)
        if row is None:
            raise UserError(f"--scan-report {path}: no scanned model in it has MODEL's sha256 {loaded.sha256}")
        budget = self.config.budget
        wanted = {"budget": self.config.verify_budget, "steps": budget.steps, "probes": len(self.probes.images), "seed": self.seed}
        found = {"budget": row.budget, "steps": row.steps, "probes": row.probes["count"], "seed": row.seed}
        differ = [f"{key} {_shown(found[key])} (this run: {wanted[key]})" for key in wanted if found[key] != wanted[key]]
        if row.probes["synthetic"]:
            differ.append("probes synthetic world images (this run: held-out images of --data; scan with --data)")
        if row.reference is not None:
            differ.append("scanned with --reference (purify's checks run without one)")
        differ += self._other_thresholds(row, loaded)
        if differ:
            raise UserError(f"--scan-report {path}: its scan of MODEL differs from this run's checks: {'; '.join(differ)}")
        return row

    def _other_thresholds(self, row: ScannedModel, loaded) -> list[str]:
        """The signals whose thresholds in the report are not the ones this run's checks apply."""
        size, family = loaded.model.image_size, loaded.model.family
        names = [s["name"] for s in row.signals]
        expected = ["decree", "universal-perturbation", "target-alignment"]
        if names != expected:
            return [f"signals {_shown(', '.join(names))} (this run: {', '.join(expected)})"]
        differ = []
        for entry in row.signals:
            limit = lab_threshold(entry["name"], size, family)  # purify's checks take no threshold flags, no calibration file
            if (entry["threshold"], entry["threshold_source"], entry["counted"]) != (limit.value, limit.source, limit.counts):
                differ.append(
                    f"{entry['name']} threshold {entry['threshold']:g} ({_shown(entry['threshold_source'])}; this run: {limit.value:g}, {limit.source})"
                )
        return differ

    def check_input(self, model, retrieval: Retrieval, notes) -> None:
        """The before check: measured, or the signals of --scan-report beside the measured retrieval."""
        if not self.runs:
            if self.rt.is_main:
                notes(f"backdoor check not run: {self.reason}")
            return
        if self.prior is not None:
            target = None
            self.before = Check(0, 0.0, retrieval.recalls, self.prior.signals, target, source="scan-report")
            if self.rt.is_main:
                notes(f"backdoor check of the input: from --scan-report {self.config.scan_report} ({self._fired_text(self.before)})")
            return
        self.before = self._check(model, retrieval, 0, 0.0, "the input model", notes)

    # --- during training -----------------------------------------------------------------------

    @property
    def checks_during_training(self) -> bool:
        """--until-clean checks at every epoch end, where there is something to stop on."""
        return self.runs and self.config.until_clean and bool(self.before.fired)

    def measuring(self, measure_retrieval, notes) -> Measuring:
        """What the engine measures: retrieval at every epoch end; with checks during training, the check
        too (epoch ends and every --verify-every steps), and training stops at the first that passes."""
        if not self.checks_during_training:
            return Measuring(lambda module: {"utility": measure_retrieval(module).recalls})

        def measure(module) -> dict:
            retrieval = measure_retrieval(module)
            check = self._check(module, retrieval, None, None, "the model in training", notes)
            record = {k: v for k, v in check.record().items() if k not in ("step", "epoch")}  # the engine adds them to the line
            return {"utility": retrieval.recalls, "verification": record}

        return Measuring(measure, every=self.config.verify_every, stop=lambda fields: fields["verification"]["passed"])

    # --- after training ------------------------------------------------------------------------

    def check_output(self, model, retrieval: Retrieval, result: TrainResult, notes) -> None:
        """The after check: the last check during training if it saw the output, else a new one."""
        self.checks = [Check.of_record(m["verification"], m["step"], m["epoch"]) for m in result.measured if "verification" in m]
        if not self.runs:
            return
        # The first check that passed: training stopped there (or the schedule ended there, at its last step).
        self.stopped = next((c for c in self.checks if c.passed), None)
        self.ended_early = result.stopped
        last = self.checks[-1] if self.checks else None
        if last is not None and last.step == result.steps:
            self.after = last
        else:
            self.after = self._check(model, retrieval, result.steps, result.epochs_completed, "the output model", notes)

    def _check(self, model, retrieval: Retrieval, step: int | None, epoch: float | None, what: str, notes) -> Check:
        """The scan's evidence on ``model`` (on the main process; the others take its outcome)."""
        rt = self.rt

        def scan() -> tuple[list[dict], str | None, float] | None:
            if not rt.is_main:
                return None
            started = time.perf_counter()
            evidence = in_memory(self._session(), model, what)
            return evidence.signals, evidence.target.get("label"), time.perf_counter() - started

        signals, target, seconds = rt.broadcast_object(rt.agree(scan))
        self.seconds += seconds
        check = Check(step if step is not None else 0, epoch if epoch is not None else 0.0, retrieval.recalls, signals, target)
        if self.before is not None:
            check.passed = not check.fired and self._within_guard(check)
        if rt.is_main:
            notes(f"backdoor check of {what}: {self._fired_text(check)}; held-out R@1 {check.r1} ({seconds:.0f} s)")
        return check

    def _within_guard(self, check: Check) -> bool:
        before, now = self.before.r1, check.r1
        return before is not None and now is not None and before - now <= self.config.max_utility_drop + 1e-9

    def _session(self) -> Session:
        config = self.config
        scan = ScanConfig(models=(self.model_path,), budget=config.verify_budget, seed=self.seed, probes=config.verify_probes, steps=config.verify_steps)
        probes = self.probes
        return Session(scan, config.budget, Runtime(self.rt.device, "fp32"), None, lambda size: probes)

    @staticmethod
    def _fired_text(check: Check) -> str:
        return f"fired: {', '.join(check.fired)}" if check.fired else "no counted signal fired"

    # --- the report ----------------------------------------------------------------------------

    @property
    def verdict(self) -> str:
        if not self.runs:
            return NOT_RUN
        if not self.before.fired:
            return NONE_BEFORE
        return REMAINS if self.after.fired else REMOVED

    @property
    def required(self) -> bool:
        return self.config.until_clean or self.config.require_clean

    @property
    def passed(self) -> bool | None:
        """Whether the written model passes the check (None: not run)."""
        return None if not self.runs else self.after.passed

    def statement(self) -> str:
        verdict = self.verdict
        if verdict == NOT_RUN:
            return f"not run: {self.reason}"
        if verdict == NONE_BEFORE:
            late = f"; on the output, {', '.join(self.after.fired)} fired" if self.after.fired else ""
            return NONE_BEFORE_TEXT + late
        if verdict == REMOVED:
            return f"{', '.join(self.before.fired)} fired on the input model; no counted signal fires on the output"
        return f"{', '.join(self.before.fired)} fired on the input model; {', '.join(self.after.fired)} still fires on the output"

    def outcome(self) -> str | None:
        """--until-clean's ending in words (None without it)."""
        if not self.config.until_clean or not self.runs:
            return None
        if not self.before.fired:
            return "nothing fired on the input: nothing to stop on, the full schedule ran (checked before and after training only)"
        if self.stopped is not None:
            where = f"epoch {self.stopped.epoch:g} (step {self.stopped.step})"
            if not self.ended_early:
                return f"the check at the schedule's end, {where}, was the first with no counted signal firing and R@1 within the guard"
            return f"stopped at {where}: the first check with no counted signal firing and R@1 within the guard"
        if self.after.fired:
            return "the schedule ended with evidence left: the last model was written (exit 1)"
        return "the schedule ended with no evidence left but R@1 below the guard at every check without it: the last model was written (exit 1)"

    def report(self, run_dir: Path) -> dict[str, Any]:
        """The report's ``verification`` object; writes RUN_DIR/verification.json (the checks' history)."""
        config = self.config
        document: dict[str, Any] = {
            "verdict": self.verdict,
            "statement": self.statement(),
            "budget": config.verify_budget,
            "until_clean": config.until_clean,
            "required": self.required,
            "passed": self.passed,
        }
        if not self.runs:
            return {**document, "reason": self.reason, "history": None, "chart": None}
        history = [self.before, *self.checks] + ([] if any(c is self.after for c in self.checks) else [self.after])
        records = [c.record() for c in history]
        if self.rt.is_main:
            write_json(run_dir / HISTORY_FILE, {"checks": records})
            save_checks_png(records, config.max_utility_drop, run_dir / CHART_FILE)
        return {
            **document,
            "reason": None,
            "outcome": self.outcome(),
            "steps": config.budget.steps,
            "seed": self.seed,
            "probes": {"source": "held-out", "count": len(self.probes.images), "skipped": self.probes.skipped, "data": self.probes.data},
            "before": self._side(self.before),
            "after": self._side(self.after),
            "signals": self._table(),
            "utility_guard": self._guard(),
            "every": (config.verify_every or "epoch") if config.until_clean else None,
            "checks": len(history),
            "stopped": None if self.stopped is None else {"step": self.stopped.step, "epoch": self.stopped.epoch},
            "history": str(run_dir / HISTORY_FILE),
            "chart": str(run_dir / CHART_FILE),
            "seconds": round(self.seconds, 2),
        }

    def _side(self, check: Check) -> dict[str, Any]:
        side = {"step": check.step, "epoch": check.epoch, "source": check.source, "fired": check.fired, "target": check.target, "r1": check.r1}
        if check.source == "scan-report":
            side["scan_report"] = str(self.config.scan_report)
            side["probes"] = self.prior.probes.get("description")
        return side

    def _table(self) -> list[dict[str, Any]]:
        """Each signal's statistic before and after, beside its threshold (the after check's)."""
        before = {s["name"]: s for s in self.before.signals}
        rows = []
        for entry in self.after.signals:
            name, earlier = entry["name"], before.get(entry["name"], {})
            rows.append(
                {
                    "name": name,
                    "statistic_name": STATISTIC_NAMES.get(name),
                    "before": earlier.get("statistic"),
                    "after": entry["statistic"],
                    "threshold": entry["threshold"],
                    "threshold_source": entry["threshold_source"],
                    "fires_when": entry["fires_when"],
                    "counted": entry["counted"],
                    "fired_before": earlier.get("fired"),
                    "fired_after": entry["fired"],
                }
            )
        return rows

    def _guard(self) -> dict[str, Any]:
        before, after = self.before.r1, self.after.r1
        drop = None if before is None or after is None else round(before - after, 6)
        return {"measure": "mean of i2t and t2i R@1", "max_drop": self.config.max_utility_drop, "before": before, "after": after, "drop": drop,
                "within": self._within_guard(self.after)}  # fmt: skip
