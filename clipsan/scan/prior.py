"""A ``clipsan scan --format json`` report handed back as input (``purify --scan-report``): untrusted.

It is read whole up to a bound, parsed strictly (``strict_json.read_object``: no NaN or Infinity, no
key given twice, no runaway nesting), and checked field by field for what a reuse needs (a number
that overflows to infinity included); anything else is refused in one line naming the file. Which
scanned model and settings are the ones to reuse is the reader's caller's to decide
(``clipsan.jobs.verification``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipsan import strict_json
from clipsan.config.limits import MAX_REPORT_BYTES
from clipsan.errors import UserError

FIRST_SCHEMA = 2  # the batch shape (models[]); later schemas are read if they keep the fields below
SIGNAL_FIELDS = {"name": str, "threshold_source": str, "fires_when": str, "fired": bool, "counted": bool, "inversion_succeeded": bool}


@dataclass(frozen=True)
class ScannedModel:
    """One row of a scan report: what was scanned, how, and its signals' entries."""

    sha256: str
    budget: str
    steps: int
    seed: int
    probes: dict[str, Any]  # source, synthetic, data, count, skipped, description
    reference: dict[str, Any] | None
    signals: list[dict[str, Any]]
    verdict: str


def read_scan_report(path: str | Path) -> list[ScannedModel]:
    """Every scanned model of the report at ``path`` (a one-model document or a batch)."""
    path = Path(path)
    document = strict_json.read_object(path, MAX_REPORT_BYTES, "clipsan scan report")
    schema = document.get("schema_version")
    if type(schema) is not int or schema < FIRST_SCHEMA:
        shown = schema if type(schema) is int else f"a {type(schema).__name__}"  # the value itself may be any size
        raise UserError(f"{path}: not a clipsan scan report of schema {FIRST_SCHEMA} or later (schema_version {shown}); scan the model again")
    rows = document.get("models")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: a scan report with no scanned model (models[] is empty or missing)")
    return [_row(path, index, row) for index, row in enumerate(rows)]


def _field(path: Path, where: str, row: dict, key: str, kind: type) -> Any:
    value = row.get(key) if isinstance(row, dict) else None
    # bool is an int to Python; a report's counts and flags are not each other
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{path}: {where}.{key} is missing or not a {kind.__name__} (is this a clipsan scan report of this version?)")
    return value


def _number(path: Path, where: str, entry: dict, key: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{path}: {where}.{key} is missing or not a number")
    return float(value)


def _row(path: Path, index: int, row: Any) -> ScannedModel:
    where = f"models[{index}]"
    if not isinstance(row, dict):
        raise UserError(f"{path}: {where} is not an object")
    probes = _field(path, where, row, "probes", dict)
    _field(path, f"{where}.probes", probes, "count", int)
    _field(path, f"{where}.probes", probes, "synthetic", bool)
    reference = row.get("reference")
    if reference is not None and not isinstance(reference, dict):
        raise UserError(f"{path}: {where}.reference is not an object or null")
    signals = _field(path, where, row, "signals", list)
    if not signals:
        raise UserError(f"{path}: {where}.signals is empty")
    entries = []
    for number, entry in enumerate(signals):
        at = f"{where}.signals[{number}]"
        if not isinstance(entry, dict):
            raise UserError(f"{path}: {at} is not an object")
        for key, kind in SIGNAL_FIELDS.items():
            _field(path, at, entry, key, kind)
        entries.append({**entry, "statistic": _number(path, at, entry, "statistic"), "threshold": _number(path, at, entry, "threshold")})
    return ScannedModel(
        sha256=_field(path, where, row, "sha256", str).lower(),
        budget=_field(path, where, row, "budget", str),
        steps=_field(path, where, row, "steps", int),
        seed=_field(path, where, row, "seed", int),
        probes=probes,
        reference=reference,
        signals=entries,
        verdict=_field(path, where, row, "verdict", str),
    )
