"""A scan report as SARIF 2.1.0, the format code-scanning dashboards read (the JSON form is the report itself)."""

from __future__ import annotations

from pathlib import Path

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

STATISTIC_NAMES = {"below": "PL1", "above": "ratio"}


def _artifact_uri(path: str) -> str:
    p = Path(path)
    return p.resolve().as_uri() if p.is_absolute() else p.as_posix()


def _result(report: dict, signal: dict) -> dict:
    rule = RULES[signal["name"]]
    target = report["target"]
    relation = "<" if signal["fires_when"] == "below" else ">="
    stat = STATISTIC_NAMES[signal["fires_when"]]
    text = (
        f"{rule['short']} {stat} {signal['statistic']:.4f} {relation} threshold {signal['threshold']:.4f}. "
        f"Likely target: '{target['label']}' (cosine {target['similarity']:.3f}). "
        f"Inverted trigger: {report['trigger']['png']}."
    )
    return {
        "ruleId": rule["id"],
        "level": "error",
        "message": {"text": text},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": _artifact_uri(report["model"])}}}],
        "properties": {
            "signal": signal["name"],
            "statistic": signal["statistic"],
            "threshold": signal["threshold"],
            "target": target["label"],
            "targetSimilarity": target["similarity"],
        },
    }


def to_sarif(report: dict) -> dict:
    """SARIF 2.1.0: one run, one result (level error) per signal that found backdoor evidence."""
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
    notes = []
    if report["probes"]["synthetic"]:
        notes.append({"level": "note", "message": {"text": "probed with synthetic world images (no --data given)"}})
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {"driver": {"name": "clipsan", "version": report["tool"]["version"], "rules": rules}},
                "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notes}],
                "artifacts": [{"location": {"uri": _artifact_uri(report["model"])}, "hashes": {"sha-256": report["sha256"]}}],
                "results": [_result(report, s) for s in report["signals"] if s["fired"] and s["counted"]],
                "properties": {"verdict": report["verdict"], "seconds": report["seconds"]},
            }
        ],
    }
