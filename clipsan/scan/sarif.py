"""A scan report as SARIF 2.1.0, the format code-scanning dashboards read (the JSON form is the report itself).

One run for the whole call: an artifact per MODEL; per scanned model, a result (level error, kind
fail) for each counting signal that fired, or one result of kind pass (level none) when none did, so
every model has a result; a MODEL that could not be read is a tool execution notification (level
error) and makes the invocation unsuccessful; a model's warnings (a verdict on an extrapolated
threshold) are notifications of level warning. Each result names the threshold it was judged by and
that threshold's source (message and properties).

What validators and GitHub code scanning ask for: the driver's informationUri, and a region in every
location (GitHub shows only results with a start line; a finding about a whole checkpoint is
anchored at line 1 of its file). Microsoft's SARIF Multitool validates the output with no error
and no warning (tests/test_scan.py runs it when it is installed).
"""

from __future__ import annotations

from pathlib import Path

from clipsan.scan.thresholds import RELATIVE, STATISTIC_NAMES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
INFORMATION_URI = "https://pypi.org/project/clipsan/"  # the package's index page (the project has no other home page yet)
WHOLE_FILE = {"startLine": 1}  # the region of a finding about a whole checkpoint

RULES = {
    "decree": {
        "id": "CLIPSAN001",
        "name": "SmallTriggerCollapsesImageEmbeddings",
        "short": "A small inverted trigger collapses the image encoder's embeddings (DECREE).",
        "full": "Trigger inversion found a mask covering a fraction PL1 of the image whose stamp maps clean probe "
        "images to nearly one embedding; clean encoders need a larger mask. Backdoored if PL1 < threshold, or with "
        "--reference if PL1 / the reference's PL1 < the ratio threshold.",
    },
    "universal-perturbation": {
        "id": "CLIPSAN004",
        "name": "FaintWholeImageChangeCollapsesImageEmbeddings",
        "short": "A faint universal perturbation of the whole image collapses the image encoder's embeddings.",
        "full": "Inversion found an additive perturbation, the same for every image and at most Linf in every pixel, that maps "
        "clean probe images to nearly one embedding; clean encoders need a larger one. Whole-image triggers (blends, "
        "sinusoids, noise) leave this trace. Backdoored if Linf < threshold, or with --reference if Linf / the reference's "
        "Linf < the ratio threshold.",
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
    return [{"physicalLocation": {"artifactLocation": {"uri": _artifact_uri(model)}, "region": dict(WHOLE_FILE)}}]


def _comparison(signal: dict) -> str:
    """E.g. 'PL1 0.0450 < threshold 0.0660 (lab-32px)', or the ratio's under the relative rule."""
    relation = ("<" if signal["fired"] else ">=") if signal["fires_when"] == "below" else (">=" if signal["fired"] else "<")
    name = STATISTIC_NAMES[signal["name"]]
    if signal["rule"] == RELATIVE:
        return (
            f"ratio {signal['ratio']:.4f} ({name} {signal['statistic']:.4f} / reference {signal['reference_statistic']:.4f}) {relation} "
            f"threshold {signal['ratio_threshold']:.4f} ({signal['ratio_threshold_source']})"
        )
    return f"{name} {signal['statistic']:.4f} {relation} threshold {signal['threshold']:.4f} ({signal['threshold_source']})"


def _judged_by(signal: dict) -> dict:
    """A result's properties: the statistic, and the threshold it was judged by with its source."""
    properties = {"signal": signal["name"], "statistic": signal["statistic"], "rule": signal["rule"]}
    if signal["rule"] == RELATIVE:
        keys = ("reference_statistic", "ratio", "ratio_threshold", "ratio_threshold_source", "threshold", "threshold_source")
        return properties | {_camel(key): signal[key] for key in keys}
    return properties | {"threshold": signal["threshold"], "thresholdSource": signal["threshold_source"]}


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word.title() for word in rest)


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
        "properties": _judged_by(signal) | {"target": target["label"], "targetSimilarity": target["similarity"]},
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
        "properties": _judged_by(report["signals"][0]),
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
    notes += [{"level": "warning", "message": {"text": f"{row['model']}: {w}"}, "locations": _location(row["model"])} for row in rows for w in row["warnings"]]
    if any(row["probes"]["synthetic"] for row in rows):
        notes.append({"level": "note", "message": {"text": "probed with synthetic world images (no --data given)"}})
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {"driver": {"name": "clipsan", "version": document["tool"]["version"], "informationUri": INFORMATION_URI, "rules": rules}},
                "invocations": [{"executionSuccessful": not document["errors"], "toolExecutionNotifications": notes}],
                "artifacts": [{"location": {"uri": _artifact_uri(row["model"])}, "hashes": {"sha-256": row["sha256"]}} for row in rows],
                "results": [result for row in rows for result in _results(row)],
                "properties": {"verdict": document["verdict"], "summary": document["summary"], "seconds": document["seconds"]},
            }
        ],
    }
