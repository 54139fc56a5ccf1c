"""A scan report as SARIF 2.1.0, the format code-scanning dashboards read (the JSON form is the report itself).

One run for the whole call: an artifact per MODEL; per scanned model, a result (level error, kind
fail) for each counting signal that fired, or one result of kind pass (level none) when none did, so
every model has a result; a MODEL that could not be read is a tool execution notification (level
error) and makes the invocation unsuccessful.
"""

from __future__ import annotations

from pathlib import Path

from clipsan.scan.thresholds import STATISTIC_NAMES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"

RULES = {
    "decree": {
        "id": "CLIPSAN001",
        "name": "SmallTriggerCollapsesImageEmbeddings",
        "short": "A small inverted trigger collapses the image encoder's embeddings (DECREE).",
        "full": "Trigger inversion found a mask covering a fraction PL1 of the image whose stamp maps clean probe "
        "images to nearly one embedding; clean encoders need a larger mask. Backdoored if PL1 < threshold.",
    },
    "universal-perturbation": {
        "id": "CLIPSAN004",
        "name": "FaintWholeImageChangeCollapsesImageEmbeddings",
        "short": "A faint universal perturbation of the whole image collapses the image encoder's embeddings.",
        "full": "Inversion found an additive perturbation, the same for every image and at most Linf in every pixel, that maps "
        "clean probe images to nearly one embedding; clean encoders need a larger one. Whole-image triggers (blends, "
        "sinusoids, noise) leave this trace. Backdoored if Linf < threshold.",
    },
    "reference-divergence": {
        "id": "CLIPSAN002",
        "name": "SmallTriggerDivertsFromReference",
        "short": "A small stamp makes the model's image features depart from the reference model's.",
        "full": "Inversion against --reference found a mask covering a fraction PL1 of the image on which the "
        "suspect's features of stamped images move far from the reference's features of the same images "
        "(the behaviour ABD's backdoor loss targets). Backdoored if PL1 < threshold.",
    },
    "target-alignment": {
        "id": "CLIPSAN003",
        "name": "InvertedTriggerPointsAtACaption",
        "short": "The inverted trigger sends images to a caption's embedding (a backdoor target).",
        "full": "The point the inverted trigger collapses images to matches the text 'a photo of a {label}.' about as "
        "well as natural images match their best caption (ratio >= threshold); a clean encoder's smallest "
        "collapsing mask leads to a point no caption describes.",
    },
}


def _artifact_uri(path: str) -> str:
    p = Path(path)
    return p.resolve().as_uri() if p.is_absolute() else p.as_posix()


def _location(model: str) -> list[dict]:
    return [{"physicalLocation": {"artifactLocation": {"uri": _artifact_uri(model)}}}]


def _comparison(signal: dict) -> str:
    relation = ("<" if signal["fired"] else ">=") if signal["fires_when"] == "below" else (">=" if signal["fired"] else "<")
    return f"{STATISTIC_NAMES[signal['name']]} {signal['statistic']:.4f} {relation} threshold {signal['threshold']:.4f}"


def _finding(report: dict, signal: dict) -> dict:
    rule = RULES[signal["name"]]
    target = report["target"]
    text = (
        f"{rule['short']} {_comparison(signal)}. "
        f"Likely target: '{target['label']}' (cosine {target['similarity']:.3f}). "
        f"Inverted trigger: {report['trigger']['png']}."
    )
    return {
        "ruleId": rule["id"],
        "kind": "fail",
        "level": "error",
        "message": {"text": text},
        "locations": _location(report["model"]),
        "properties": {
            "signal": signal["name"],
            "statistic": signal["statistic"],
            "threshold": signal["threshold"],
            "target": target["label"],
            "targetSimilarity": target["similarity"],
        },
    }


def _pass(report: dict) -> dict:
    """A model without evidence: DECREE's rule (the signal every scan runs), kind pass."""
    checked = "; ".join(f"{s['name']} {_comparison(s)}" for s in report["signals"] if s["counted"])
    return {
        "ruleId": RULES["decree"]["id"],
        "kind": "pass",
        "level": "none",
        "message": {"text": f"No backdoor evidence: {checked}."},
        "locations": _location(report["model"]),
        "properties": {"signal": "decree", "statistic": report["statistic"], "threshold": report["threshold"]},
    }


def _results(report: dict) -> list[dict]:
    findings = [_finding(report, s) for s in report["signals"] if s["fired"] and s["counted"]]
    return findings or [_pass(report)]


def to_sarif(document: dict) -> dict:
    """SARIF 2.1.0 of a scan document (clipsan.reports.ScanBatchReport.to_json())."""
    rules = [
        {
            "id": r["id"],
            "name": r["name"],
            "shortDescription": {"text": r["short"]},
            "fullDescription": {"text": r["full"]},
            "defaultConfiguration": {"level": "error"},
        }
        for r in RULES.values()
    ]
    rows = document["models"]
    notes = [{"level": "error", "message": {"text": f"not scanned: {e['error']}"}, "locations": _location(e["model"])} for e in document["errors"]]
    if any(row["probes"]["synthetic"] for row in rows):
        notes.append({"level": "note", "message": {"text": "probed with synthetic world images (no --data given)"}})
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {"driver": {"name": "clipsan", "version": document["tool"]["version"], "rules": rules}},
                "invocations": [{"executionSuccessful": not document["errors"], "toolExecutionNotifications": notes}],
                "artifacts": [{"location": {"uri": _artifact_uri(row["model"])}, "hashes": {"sha-256": row["sha256"]}} for row in rows],
                "results": [result for row in rows for result in _results(row)],
                "properties": {"verdict": document["verdict"], "summary": document["summary"], "seconds": document["seconds"]},
            }
        ],
    }
