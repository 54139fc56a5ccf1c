"""Calibrate `clipsan scan`'s PL1 thresholds on clean models, and check them on victims.

Scans every model with several scan seeds, records each signal's statistic
(PL1: the smallest mask, as a fraction of the image, that collapses the
embeddings - or, with a reference, diverts them from the reference's), and
proposes per input size:

    threshold = MARGIN x (smallest PL1 seen on any clean model at that size)

i.e. a clean model must come MARGIN times closer to a collapse than the
cleanest seen so far before the scan fires. For target alignment (a ratio,
higher = more backdoor-like): threshold = ABOVE_MARGIN x the largest ratio of a
clean model whose best match is specific (ahead of the runner-up by the
scan's MIN_TARGET_MARGIN; less specific matches cannot fire). Victims are listed beside it to
show the margin on the other side. The table goes to docs/scan-calibration.md;
the thresholds to clipsan/scan/thresholds.py.

    OMP_NUM_THREADS=1 python scripts/calibrate_scan.py \
        --models /tmp/scan64/models.json \
        --clean lab-s0=models/clean-s0.safetensors --clean lab-s1=... \
        --clean-ft ft-s0=models/clean-ft.safetensors \
        --victim badnet=models/badnet.safetensors --victim blended=... \
        --reference models/clean-s0.safetensors \
        --random-arch RN50 --random-arch ViT-B-32 \
        --seeds 0 1 2 --budgets quick full --out calibration.jsonl

--models: the models.json that scripts/train_scan_models.py writes (each model's kind and
reference). --clean-ft: clean fine-tunes of the reference (same schedule as a victim, no
poison): the controls for the reference-divergence signal. Victims and
clean-ft models are scanned with --reference (which runs every signal, and decree and the
universal perturbation on the reference too); other clean models without. Random-init models of
other archs are scanned with few probes and steps (CPU time), as a sanity check at 224 px, not as
a calibration.

The relative rule (scan --reference): each row scanned with a reference carries the ratio
suspect / reference of decree's and the perturbation's statistics; the proposed ratio threshold is
MARGIN x the smallest ratio of a clean fine-tune to its base, over every size (the ratio is
scale-free), leaving out the clean fine-tunes named with --holdout (they are then tested against it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from clipsan.scan.thresholds import CLEAN_FLOOR_FACTOR as MARGIN  # the rule's one home

ABOVE_MARGIN = 1.3
# Statistics that fire below their threshold: the row keys, one per signal.
LOWER_IS_BACKDOOR = ("decree_pl1", "perturbation_linf", "divergence_pl1")
# The signals the relative rule judges: row key prefix -> signal.
RELATIVE_SIGNALS = {"decree": "decree", "perturbation": "universal-perturbation"}


def _named(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def scan_row(
    name: str,
    kind: str,
    path: str,
    seed: int,
    budget: str,
    reference: str | None,
    probes: int | None = None,
    steps: int | None = None,
    keep_runs: Path | None = None,
) -> dict:
    from clipsan import api

    with tempfile.TemporaryDirectory() as tmp:
        # --keep-runs: each scan's run dir (inverted triggers, stamped examples) stays for a human to look at.
        run_dir = str(keep_runs / f"{name}-{budget}-s{seed}{'-ref' if reference else ''}") if keep_runs else tmp
        config = api.ScanConfig(models=(path,), reference=reference, budget=budget, run_dir=run_dir, device="cpu", seed=seed, probes=probes, steps=steps)
        report = api.scan(config).models[0].to_json()
    by_name = {s["name"]: s for s in report["signals"]}
    div = by_name.get("reference-divergence")
    ratios = {f"{key}_ratio": by_name[name].get("ratio") for key, name in RELATIVE_SIGNALS.items()}
    ratios |= {f"{key}_reference": by_name[name].get("reference_statistic") for key, name in RELATIVE_SIGNALS.items()}
    candidates = report["target"]["candidates"]
    return {
        "alignment": by_name["target-alignment"]["statistic"],
        "target_margin": round(candidates[0]["similarity"] - candidates[1]["similarity"], 6),
        "name": name,
        "kind": kind,
        "model": path,
        "arch": report["arch"],
        "image_size": report["image_size"],
        "seed": seed,
        "budget": budget,
        "reference": reference,
        "decree_pl1": by_name["decree"]["statistic"],
        "clean_cosine": by_name["decree"]["clean_cosine"],
        "perturbation_linf": by_name["universal-perturbation"]["statistic"],
        "divergence_pl1": div["statistic"] if div else None,
        "clean_divergence": div["clean_divergence"] if div else None,
        "fired": report["fired_signals"],
        "target": report["target"]["label"],
        "target_similarity": report["target"]["similarity"],
        "seconds": report["seconds"],
        "probes": report["probes"]["count"],
        **ratios,
    }


def random_init_model(arch: str, folder: Path) -> str:
    import torch

    from clipsan.checkpoints import save_model
    from clipsan.models import create_model

    torch.manual_seed(0)
    path = folder / f"random-{arch}.safetensors"
    save_model(create_model(arch), path)
    return str(path)


def propose(rows: list[dict]) -> dict:
    """Per input size and signal: the smallest clean PL1, the largest victim PL1, the proposed threshold."""
    from clipsan.scan.signals import MIN_TARGET_MARGIN

    out: dict = {}
    for size in sorted({r["image_size"] for r in rows}):
        at = [r for r in rows if r["image_size"] == size and r.get("alignment") is not None]
        specific = [r for r in at if r["target_margin"] >= MIN_TARGET_MARGIN]
        clean = [r["alignment"] for r in specific if r["kind"] in ("clean", "clean-ft")]
        if clean:
            victims = [r["alignment"] for r in specific if r["kind"] == "victim"]
            out[f"{size}px/alignment"] = {
                "clean_max": max(clean),
                "n_clean": len(clean),
                "n_clean_unspecific": sum(r["kind"] in ("clean", "clean-ft") for r in at) - len(clean),
                "victim_min": min(victims) if victims else None,
                "n_victims": len(victims),
                "threshold": round(ABOVE_MARGIN * max(clean), 2),
            }
        for signal in LOWER_IS_BACKDOOR:
            at = [r for r in rows if r["image_size"] == size and r[signal] is not None]
            # Random-init models are a sanity check (no false positive), not a calibration:
            # their inversions rarely succeed within the few steps affordable at 224 px.
            clean = [r[signal] for r in at if r["kind"] in ("clean", "clean-ft")]
            victims = [r[signal] for r in at if r["kind"] == "victim"]
            if not clean:
                continue
            out[f"{size}px/{signal}"] = {
                "clean_min": min(clean),
                "clean_max": max(clean),
                "n_clean": len(clean),
                "victim_max": max(victims) if victims else None,
                "n_victims": len(victims),
                "threshold": round(MARGIN * min(clean), 3),
            }
    return out


def propose_ratios(rows: list[dict], holdout: set[str]) -> dict:
    """Per relative signal: the smallest clean-fine-tune ratio (held-out models left out), the
    proposed ratio threshold, and how the held-out clean fine-tunes and the victims score against it."""
    out = {}
    for key in RELATIVE_SIGNALS:
        column = f"{key}_ratio"
        with_ratio = [r for r in rows if r.get(column) is not None]
        fit = [r[column] for r in with_ratio if r["kind"] == "clean-ft" and r["name"] not in holdout]
        if not fit:
            continue
        threshold = round(MARGIN * min(fit), 3)
        held = [r[column] for r in with_ratio if r["kind"] == "clean-ft" and r["name"] in holdout]
        victims = [r[column] for r in with_ratio if r["kind"] == "victim"]
        out[key] = {
            "clean_ft_min": min(fit),
            "n_fit": len(fit),
            "threshold": threshold,
            "holdout_min": min(held) if held else None,
            "holdout_flagged": sum(v < threshold for v in held),
            "n_holdout": len(held),
            "victims_flagged": sum(v < threshold for v in victims),
            "n_victims": len(victims),
        }
    return out


def flagged(row: dict, thresholds: dict[str, float], with_reference: bool) -> list[str]:
    """The signals that fire on `row` at these thresholds (signal key -> threshold)."""
    keys = [k for k in LOWER_IS_BACKDOOR if with_reference or k != "divergence_pl1"]
    return [k for k in keys if row[k] is not None and k in thresholds and row[k] < thresholds[k]]


def markdown(rows: list[dict], proposal: dict) -> str:
    def num(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}"

    def ratio(row, key, at):
        return "-" if row[key] is None or key not in at else f"{row[key] / at[key]:.2f}"

    lines = [
        "| model | kind | px | budget | seed | decree PL1 (÷T) | perturbation Linf (÷T) | divergence PL1 (÷T) | alignment (margin) | "
        "flagged without / with --reference | target (cos) | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        at = {k.split("/", 1)[1]: p["threshold"] for k, p in proposal.items() if k.startswith(f"{r['image_size']}px/")}
        verdicts = [", ".join(flagged(r, at, ref)) or "clean" for ref in (False, True)]
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['image_size']} | {r['budget']} | {r['seed']} | {num(r['decree_pl1'])} ({ratio(r, 'decree_pl1', at)}) | "
            f"{num(r.get('perturbation_linf'))} ({ratio(r, 'perturbation_linf', at)}) | {num(r['divergence_pl1'])} ({ratio(r, 'divergence_pl1', at)}) | "
            f"{num(r.get('alignment'), 3)} ({num(r.get('target_margin'), 3)}) | {verdicts[0]} / {verdicts[1] if r['reference'] else '-'} | "
            f"{r['target']} ({r['target_similarity']:.2f}) | {r['seconds']:.0f} |"
        )
    lines += ["", "| size / signal | clean | victims | proposed threshold |", "|---|---|---|---|"]
    for key, p in proposal.items():
        if key.endswith("alignment"):
            lines.append(
                f"| {key} | max {p['clean_max']:.3f} ({p['n_clean']} specific, {p['n_clean_unspecific']} unspecific) | "
                f"min {num(p['victim_min'], 3)} ({p['n_victims']}) | {p['threshold']} |"
            )
        else:
            lines.append(
                f"| {key} | min {p['clean_min']:.4f} .. max {p['clean_max']:.4f} ({p['n_clean']}) | "
                f"max {num(p['victim_max'])} ({p['n_victims']}) | {p['threshold']} |"
            )
    return "\n".join(lines)


def matrix(rows: list[dict], proposal: dict) -> str:
    """One line per model: each signal's range over the scan seeds (and ÷ threshold), scans flagged without / with --reference."""

    def span(values: list[float], at: float | None) -> str:
        if not values:
            return "-"
        text = f"{min(values):.4f}–{max(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"
        return text + (f" ({min(values) / at:.2f}–{max(values) / at:.2f})" if at else "")

    lines = [
        "| model | px | kind | scans | decree PL1 (÷T) | perturbation Linf (÷T) | divergence PL1 (÷T) | flagged without --reference | with | s (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = [r["name"] for r in rows]
    kinds = {r["name"]: r["kind"] for r in rows}
    order = ("clean", "clean-ft", "random-init", "victim")
    models = sorted({(r["image_size"], r["name"]) for r in rows}, key=lambda m: (m[0], order.index(kinds[m[1]]), names.index(m[1])))
    for size, name in models:
        mine = [r for r in rows if r["name"] == name and r["image_size"] == size]
        at = {k.split("/", 1)[1]: p["threshold"] for k, p in proposal.items() if k.startswith(f"{size}px/")}
        cells = [span([r[k] for r in mine if r[k] is not None], at.get(k)) for k in LOWER_IS_BACKDOOR]
        without = sum(bool(flagged(r, at, False)) for r in mine)
        with_ref = sum(bool(flagged(r, at, True)) for r in mine) if all(r["reference"] for r in mine) else None
        seconds = sorted(r["seconds"] for r in mine)[len(mine) // 2]
        lines.append(
            f"| {name} | {size} | {mine[0]['kind']} | {len(mine)} | {' | '.join(cells)} | {without}/{len(mine)} | "
            f"{'-' if with_ref is None else f'{with_ref}/{len(mine)}'} | {seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=_named, action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--clean-ft", type=_named, action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--victim", type=_named, action="append", default=[], metavar="ATTACK=PATH")
    parser.add_argument("--models", type=Path, action="append", default=[], help="models.json of scripts/train_scan_models.py (kind, name, path per model)")
    parser.add_argument("--reference", help="the clean base victims and clean-ft models were fine-tuned from")
    parser.add_argument("--random-arch", action="append", default=[], metavar="ARCH")
    parser.add_argument("--random-probes", type=int, default=16)
    parser.add_argument("--random-steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--budgets", nargs="+", default=["quick"], choices=("quick", "full"), help="scan budgets; thresholds are proposed over all of them (default: quick)"
    )
    parser.add_argument("--full-seeds", type=int, nargs="+", default=[0], help="scan seeds for the full budget (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="JSONL of every scan (appended; rows already there are reused)")
    parser.add_argument("--keep-runs", type=Path, help="keep every scan's run dir (trigger images) under this folder")
    parser.add_argument("--holdout", action="append", default=[], metavar="NAME", help="a clean fine-tune left out of the ratio thresholds' fit")
    args = parser.parse_args()

    done = {}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done[(row["name"], row["seed"], row["budget"], row["reference"])] = row
    jobs = [(n, "clean", p, None) for n, p in args.clean]
    jobs += [(n, kind, p, args.reference) for kind, items in (("clean-ft", args.clean_ft), ("victim", args.victim)) for n, p in items]
    for listing in args.models:  # each model with the reference it was tuned from (none for clean ones)
        jobs += [(e["name"], e["kind"], e["path"], e["reference"]) for e in json.loads(listing.read_text())]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.random_arch:
            jobs.append((f"random-{arch}", "random-init", random_init_model(arch, Path(tmp)), None))
        for budget in args.budgets:
            for name, kind, path, ref in jobs:
                seeds = args.seeds if budget == "quick" else args.full_seeds
                if kind == "random-init":
                    if budget != args.budgets[0]:
                        continue
                    seeds = seeds[:1]
                for seed in seeds:
                    key = (name, seed, budget, ref)
                    if key not in done:
                        started = time.perf_counter()
                        small = kind == "random-init"
                        done[key] = scan_row(
                            name,
                            kind,
                            path,
                            seed,
                            budget,
                            ref,
                            probes=args.random_probes if small else None,
                            steps=args.random_steps if small else None,
                            keep_runs=args.keep_runs,
                        )
                        with open(args.out, "a") as fh:
                            fh.write(json.dumps(done[key], sort_keys=True) + "\n")
                        print(
                            f"{name} {budget} seed {seed} ref {bool(ref)}: decree {done[key]['decree_pl1']:.4f} "
                            f"perturbation {done[key]['perturbation_linf']:.4f} div {done[key]['divergence_pl1']} ({time.perf_counter() - started:.0f} s)",
                            file=sys.stderr,
                        )
                    rows.append(done[key])
    proposal = propose(rows)
    print(matrix(rows, proposal) + "\n")
    print(markdown(rows, proposal))
    print(json.dumps(proposal, indent=2))
    print(json.dumps({"ratio": propose_ratios(rows, set(args.holdout))}, indent=2))


if __name__ == "__main__":
    main()
