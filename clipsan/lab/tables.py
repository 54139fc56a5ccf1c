"""The lab's tables: per-seed evaluations folded into mean and range, the target check, lab.md.

A defense row holds one evaluation per defense seed (victims fixed): ``ca``/``asr`` are
the means over seeds, ``ca_range``/``asr_range`` the [min, max], ``seeds`` the runs
themselves. The clean and victim rows have a single run.
"""

from __future__ import annotations

from statistics import mean

from clipsan.config.attacks import DEFAULT_TARGET

# The lab's goal for a defense (issue #14): the backdoor gone, at a small clean-accuracy toll
# against the victim it started from.
TARGET_ASR = 0.05
TARGET_CA_TOLL = 0.03


def _fold(runs: list[dict], key: str) -> tuple[dict | None, dict | None]:
    if runs[0].get(key) is None:
        return None, None
    ks = runs[0][key].keys()
    values = {k: [run[key][k] for run in runs] for k in ks}
    return {k: mean(v) for k, v in values.items()}, {k: [min(v), max(v)] for k, v in values.items()}


def lab_row(attack: str, defense: str, runs: list[dict]) -> dict:
    """One table row from per-seed evaluations ({"seed", "model", "ca", "asr", "n_images"})."""
    ca, ca_range = _fold(runs, "ca")
    asr, asr_range = _fold(runs, "asr")
    return {
        "attack": attack,
        "defense": defense,
        "model": runs[0]["model"],
        "ca": ca,
        "asr": asr,
        "ca_range": ca_range,
        "asr_range": asr_range,
        "n_images": runs[0]["n_images"],
        "seeds": runs,
    }


def attacks_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["attack"] for r in rows if r["attack"] != "none"))


def pareto_front(rows: list[dict]) -> list[dict]:
    """Defense rows no other defense row beats on both CA@1 (higher) and ASR@1 (lower), by mean."""
    defended = [r for r in rows if r["defense"] != "none"]

    def point(r) -> tuple[float, float]:
        return r["ca"]["1"], r["asr"]["1"]

    def beaten(r) -> bool:
        return any(point(o)[0] >= point(r)[0] and point(o)[1] <= point(r)[1] and point(o) != point(r) for o in defended)

    return sorted((r for r in defended if not beaten(r)), key=lambda r: -r["ca"]["1"])


def target_check(rows: list[dict]) -> list[dict]:
    """Per attack: the defenses that meet ASR@1 <= 5% at <= 3 points of CA@1 below the victim (means)."""
    out = []
    for attack in attacks_of(rows):
        mine = [r for r in rows if r["attack"] == attack]
        victim = next(r for r in mine if r["defense"] == "none")
        meeting = [
            r["defense"] for r in mine if r["defense"] != "none" and r["asr"]["1"] <= TARGET_ASR and victim["ca"]["1"] - r["ca"]["1"] <= TARGET_CA_TOLL + 1e-9
        ]
        front = pareto_front(mine)
        out.append({"attack": attack, "victim_ca": victim["ca"]["1"], "meeting": meeting, "front": [r["defense"] for r in front]})
    return out


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _cell(row: dict, key: str, k: str) -> str:
    value = (row.get(key) or {}).get(k)
    spread = (row.get(f"{key}_range") or {}).get(k)
    if value is None or spread is None or len(row.get("seeds") or []) < 2:
        return _pct(value)
    return f"{_pct(value)} ({_pct(spread[0])}–{_pct(spread[1])})"


def render_markdown(payload: dict) -> str:
    settings = payload.get("settings", {})
    seeds = settings.get("defense_seeds") or [settings.get("seed", 0)]
    spread = f" Defended rows: mean (min–max) over {len(seeds)} defense seeds {seeds}, victims fixed." if len(seeds) > 1 else ""
    models = f" Models: the {settings['family']} family (`{settings['arch']}`)." if settings.get("family") and settings.get("arch") else ""
    lines = [
        "# clipsan lab",
        "",
        f"Zero-shot results on the synthetic world (%, target class `{DEFAULT_TARGET}`; ASR excludes target-class images).{models}{spread}",
        "",
        "| attack | defense | CA@1 | ASR@1 | ASR@10 |",
        "|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        lines.append(f"| {row['attack']} | {row['defense']} | {_cell(row, 'ca', '1')} | {_cell(row, 'asr', '1')} | {_cell(row, 'asr', '10')} |")
    checks = target_check(payload["rows"]) if payload["rows"] else []
    if checks:
        lines += [
            "",
            "## Pareto view",
            "",
            f"Target: ASR@1 ≤ {100 * TARGET_ASR:g}% at ≤ {100 * TARGET_CA_TOLL:g} points of CA@1 below the victim (means). "
            "Plot: [pareto.png](pareto.png) (one panel per attack; whiskers span the seeds).",
            "",
            "| attack | victim CA@1 | defenses meeting the target | Pareto front (by CA@1) |",
            "|---|---|---|---|",
        ]
        for c in checks:
            lines.append(f"| {c['attack']} | {_pct(c['victim_ca'])} | {', '.join(c['meeting']) or 'none'} | {', '.join(c['front'])} |")
    if payload["scan"]:
        lines += ["", "## Scan", "", "| model | attack | verdict | statistic | threshold | target guess |", "|---|---|---|---|---|---|"]
        for s in payload["scan"]:
            lines.append(f"| {s['model']} | {s['attack']} | {s['verdict']} | {s['statistic']:.4g} | {s['threshold']:.4g} | {s.get('target_guess') or '-'} |")
    lines += ["", "## Timings (s)", ""] + [f"- {k}: {v}" for k, v in payload["timings"].items()]
    return "\n".join(lines) + "\n"
