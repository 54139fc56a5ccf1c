"""A calibration file: scan thresholds derived from a user's own trusted models (``clipsan calibrate``).

One entry per (family, architecture, input size) of the trusted models; per signal, every clean
statistic the scans measured (each model x each seed), how many inversions found no collapsing
trigger, the smallest statistic and the threshold the rule derives from it
(thresholds.CLEAN_FLOOR_FACTOR x the smallest). ``scan --calibration FILE`` takes a model's
thresholds from its entry (source ``user:FILE``); a model without an entry, or a signal without a
threshold in it, falls back to the lab's values and the report says so.

The file is untrusted input when it is read: a strict schema (exact keys, types, ranges, a format
name and a version), read with clipsan.strict_json within MAX_BYTES; anything else is refused in one
line naming the file (exit 2). A threshold may be edited by hand (to tighten or loosen a gate);
it is read as written.

    {"format": "clipsan-scan-calibration", "version": 1, "tool": {"name", "version"},
     "rule": {"factor": 0.7, "text"}, "budget": {"probes", "steps", "batch_size"}, "seeds": [0, 1, 2],
     "probes": {"source", "data"}, "reference": null | {"model", "sha256"},
     "models": [{"model", "sha256", "family", "arch", "image_size"}],
     "entries": [{"family", "arch", "image_size",
                  "signals": {SIGNAL: {"statistics": [...], "failed", "minimum", "threshold"}}}]}
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsan import __version__, strict_json
from clipsan.config.families import MODEL_FAMILIES
from clipsan.errors import UserError
from clipsan.scan.thresholds import CLEAN_FLOOR_FACTOR

FORMAT = "clipsan-scan-calibration"
VERSION = 1
MAX_BYTES = 1 << 20  # a file of thousands of scans is a few hundred KB
MAX_SIDE = 1 << 14  # input sides above this are no image model's
CALIBRATED_SIGNALS = ("decree", "universal-perturbation", "reference-divergence")
RULE_TEXT = "threshold = factor x the smallest statistic of any trusted model over every seed"
WHAT = "clipsan calibration file"  # how messages call what was expected


@dataclass(frozen=True)
class SignalCalibration:
    statistics: tuple[float, ...]  # every successful inversion's statistic on a trusted model
    failed: int  # inversions that found no collapsing trigger within the budget
    minimum: float | None  # the clean floor; None when every inversion failed
    threshold: float | None  # None: no clean statistic to derive one from (the lab's value applies)

    @classmethod
    def derive(cls, statistics: list[float], failed: int, factor: float = CLEAN_FLOOR_FACTOR) -> SignalCalibration:
        statistics = [round(value, 6) for value in statistics]
        minimum = min(statistics) if statistics else None
        return cls(tuple(statistics), failed, minimum, None if minimum is None else round(factor * minimum, 6))


@dataclass(frozen=True)
class Entry:
    family: str
    arch: str
    image_size: int
    signals: dict[str, SignalCalibration]

    def describe(self) -> str:
        return f"{self.family} {self.arch} {self.image_size} px"


@dataclass(frozen=True)
class Calibration:
    entries: tuple[Entry, ...]
    budget: dict[str, int]  # probes, steps, batch_size of the scans behind it
    seeds: tuple[int, ...]
    probes: dict[str, Any]  # source (world | captions | labelled), data (the --data folder or null)
    models: tuple[dict[str, Any], ...]  # the trusted models: model, sha256, family, arch, image_size
    reference: dict[str, str] | None = None  # the base the trusted models were tuned from (divergence)
    factor: float = CLEAN_FLOOR_FACTOR
    tool: dict[str, str] = field(default_factory=lambda: {"name": "clipsan", "version": __version__})  # what wrote it
    path: Path | None = None  # where it was read from

    @property
    def source(self) -> str:
        """How reports name a threshold taken from this file."""
        return f"user:{self.path.name if self.path is not None else 'calibration'}"

    def entry(self, family: str, arch: str, size: int) -> Entry | None:
        return next((e for e in self.entries if (e.family, e.arch, e.image_size) == (family, arch, size)), None)

    def threshold_for(self, signal: str, family: str, arch: str, size: int) -> float | None:
        entry = self.entry(family, arch, size)
        calibrated = entry.signals.get(signal) if entry is not None else None
        return calibrated.threshold if calibrated is not None else None

    def describe(self) -> str:
        return "; ".join(e.describe() for e in self.entries) or "no entries"

    def usage(self, family: str, arch: str, size: int, budget, probe_source: str, data: str | None) -> dict[str, Any]:
        """The report's ``calibration``: the entry that applies to a model (or why none does), and
        how this scan differs from the scans behind the file (statistics move with the budget)."""
        entry = self.entry(family, arch, size)
        note = None
        if entry is None:
            note = f"{self.path}: no entry for {family} {arch} {size} px (it has: {self.describe()}): the lab's thresholds apply"
        differences = []
        if (budget.probes, budget.steps) != (self.budget["probes"], self.budget["steps"]):
            differences.append(f"calibrated with {self.budget['probes']} probes, {self.budget['steps']} steps; this scan: {budget.probes}, {budget.steps}")
        if (probe_source, data) != (self.probes["source"], self.probes["data"]):
            differences.append(f"calibrated on probes from {self.probes['data'] or 'the synthetic world'}; this scan: {data or 'the synthetic world'}")
        return {"file": str(self.path), "entry": entry.describe() if entry else None, "used": entry is not None, "note": note, "differences": differences}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "tool": dict(self.tool),
            "rule": {"factor": self.factor, "text": RULE_TEXT},
            "budget": dict(self.budget),
            "seeds": list(self.seeds),
            "probes": dict(self.probes),
            "reference": self.reference,
            "models": [dict(m) for m in self.models],
            "entries": [
                {
                    "family": e.family,
                    "arch": e.arch,
                    "image_size": e.image_size,
                    "signals": {
                        name: {"statistics": list(s.statistics), "failed": s.failed, "minimum": s.minimum, "threshold": s.threshold}
                        for name, s in e.signals.items()
                    },
                }
                for e in self.entries
            ],
        }


def write_calibration(path: str | os.PathLike[str], calibration: Calibration) -> None:
    from clipsan.atomic import write_json

    write_json(path, calibration.to_json())


# --------------------------------------------------------------------------- reading


class _Refused(Exception):
    """A field the schema refuses: where it is and what was expected (becomes one UserError line)."""

    def __init__(self, where: str, expected: str, value: Any = None, shown: bool = True):
        got = f", got {_shown(value)}" if shown else ""
        super().__init__(f"{where}: expected {expected}{got}")


def _shown(value: Any) -> str:
    """A short scalar as written (JSON), anything else by its kind."""
    if isinstance(value, (str, int, float)) or value is None:
        text = strict_json.dumps(value) if not (isinstance(value, float) and not math.isfinite(value)) else str(value)
        if len(text) <= 40:
            return text
    return strict_json.json_type(value)


def _object(value: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Refused(where, f"an object with keys {', '.join(keys)}", value)
    if set(value) != set(keys):
        missing, extra = sorted(set(keys) - set(value)), sorted(set(value) - set(keys))
        text = "; ".join(([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(map(repr, extra))}"] if extra else []))
        raise _Refused(where, f"keys {', '.join(keys)} ({text})", shown=False)
    return value


def _text(value: Any, where: str, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or not value or (choices and value not in choices):
        raise _Refused(where, f"one of {', '.join(choices)}" if choices else "a non-empty string", value)
    return value


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Refused(where, f"an integer in [{low}, {high}]", value)
    return value


def _fraction(value: Any, where: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise _Refused(where, "a number in [0, 1]" + (" or null" if optional else ""), value)
    return float(value)


def _list(value: Any, where: str, max_items: int, min_items: int = 0) -> list:
    if not isinstance(value, list) or not min_items <= len(value) <= max_items:
        raise _Refused(where, f"an array of {min_items} to {max_items} items", value)
    return value


MAX_ITEMS = 10_000


def _signal(value: Any, where: str) -> SignalCalibration:
    value = _object(value, where, ("statistics", "failed", "minimum", "threshold"))
    statistics = tuple(_fraction(v, f"{where}.statistics[{i}]") for i, v in enumerate(_list(value["statistics"], f"{where}.statistics", MAX_ITEMS)))
    failed = _integer(value["failed"], f"{where}.failed", 0, MAX_ITEMS)
    minimum = _fraction(value["minimum"], f"{where}.minimum", optional=True)
    threshold = _fraction(value["threshold"], f"{where}.threshold", optional=True)
    if not statistics and not failed:
        raise _Refused(f"{where}.statistics", "at least one scan (a statistic, or a failed inversion counted in failed)", shown=False)
    return SignalCalibration(statistics, failed, minimum, threshold)  # type: ignore[arg-type]


def _entry(value: Any, where: str) -> Entry:
    value = _object(value, where, ("family", "arch", "image_size", "signals"))
    signals = value["signals"]
    if not isinstance(signals, dict) or not signals or set(signals) - set(CALIBRATED_SIGNALS):
        raise _Refused(f"{where}.signals", f"an object with some of {', '.join(CALIBRATED_SIGNALS)}", signals)
    return Entry(
        _text(value["family"], f"{where}.family", MODEL_FAMILIES),
        _text(value["arch"], f"{where}.arch"),
        _integer(value["image_size"], f"{where}.image_size", 1, MAX_SIDE),
        {name: _signal(s, f"{where}.signals.{name}") for name, s in signals.items()},
    )


def _model(value: Any, where: str) -> dict[str, Any]:
    value = _object(value, where, ("model", "sha256", "family", "arch", "image_size"))
    for key in ("model", "sha256", "arch"):
        _text(value[key], f"{where}.{key}")
    _text(value["family"], f"{where}.family", MODEL_FAMILIES)
    _integer(value["image_size"], f"{where}.image_size", 1, MAX_SIDE)
    return value


def parse(document: dict[str, Any], path: Path | None = None) -> Calibration:
    """A Calibration from a parsed document; raises _Refused naming the first field it refuses."""
    if document.get("format") != FORMAT:
        raise _Refused("format", f'"{FORMAT}"', document.get("format"))
    if document.get("version") != VERSION:
        version = document.get("version")
        newer = isinstance(version, int) and not isinstance(version, bool) and version > VERSION
        raise _Refused("version", f"{VERSION}" + (" (written by a newer clipsan)" if newer else ""), version)
    keys = ("format", "version", "tool", "rule", "budget", "seeds", "probes", "reference", "models", "entries")
    document = _object(document, "the file", keys)
    tool = _object(document["tool"], "tool", ("name", "version"))
    tool = {key: _text(tool[key], f"tool.{key}") for key in ("name", "version")}
    rule = _object(document["rule"], "rule", ("factor", "text"))
    factor = _fraction(rule["factor"], "rule.factor")
    _text(rule["text"], "rule.text")
    budget = _object(document["budget"], "budget", ("probes", "steps", "batch_size"))
    budget = {key: _integer(budget[key], f"budget.{key}", 1, 10**7) for key in ("probes", "steps", "batch_size")}
    seeds = tuple(_integer(s, f"seeds[{i}]", 0, 2**63 - 1) for i, s in enumerate(_list(document["seeds"], "seeds", MAX_ITEMS, 1)))
    probes = _object(document["probes"], "probes", ("source", "data"))
    _text(probes["source"], "probes.source", ("world", "captions", "labelled"))
    if probes["data"] is not None:
        _text(probes["data"], "probes.data")
    reference = document["reference"]
    if reference is not None:
        reference = _object(reference, "reference", ("model", "sha256"))
        for key in ("model", "sha256"):
            _text(reference[key], f"reference.{key}")
    models = tuple(_model(m, f"models[{i}]") for i, m in enumerate(_list(document["models"], "models", MAX_ITEMS, 1)))
    entries = tuple(_entry(e, f"entries[{i}]") for i, e in enumerate(_list(document["entries"], "entries", MAX_ITEMS, 1)))
    seen: set[tuple[str, str, int]] = set()
    for i, e in enumerate(entries):
        if (e.family, e.arch, e.image_size) in seen:
            raise _Refused(f"entries[{i}]", f"one entry per family, arch and size ({e.describe()} is given twice)", shown=False)
        seen.add((e.family, e.arch, e.image_size))
    return Calibration(entries, budget, seeds, dict(probes), models, reference, factor, tool, path)  # type: ignore[arg-type]


def read_calibration(path: str | os.PathLike[str]) -> Calibration:
    """The calibration file at `path`, or a one-line UserError naming it and the field refused."""
    path = Path(path)
    document = strict_json.read_object(path, MAX_BYTES, WHAT)
    try:
        return parse(document, path)
    except _Refused as err:
        raise UserError(f"{path}: {err}; expected a {WHAT}") from None
