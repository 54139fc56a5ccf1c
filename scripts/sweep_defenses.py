"""Sweep the lab's per-recipe defense settings on a finished lab's victims (table in BENCHMARKS.md).

Each setting is a defense method with some of the lab's flags changed; every
(setting, attack, seed) is one real `clipsan purify` of the lab's victim on the lab's
defense set, run as the lab runs its stages (``clipsan.lab.jobs``: side by side, one
thread each, reused when the command line and inputs are unchanged, so the sweep can be
extended and re-run). Every model is then evaluated with `clipsan eval` under its
victim's trigger, and each (setting, attack) is reported as mean and range over seeds,
with its CA@1 toll against the victim and whether it meets the lab's target (ASR@1 <= 5%
at <= 3 points of CA@1).

A setting is ``NAME=METHOD[,--flag=value][,--switch]...``, METHOD one of the lab's
defense rows (ft, cleanclip, cleanerclip, abd, abd_align); its flags replace the lab's
for that row (``clipsan.lab.plan``):

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/sweep_defenses.py --lab /work/labs/full-main \\
        --out sweep/ --attacks badnet badclip sig --seeds 0 1 2 \\
        --setting cc-2e-4=cleanclip,--lr=2e-4 --setting abd-half=abd,--adv-prob=0.5
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from clipsan.config.lab import LabConfig
from clipsan.lab.jobs import Job, run_jobs
from clipsan.lab.plan import make_plan, method_of
from clipsan.lab.runner import WorldFiles, evaluate_models
from clipsan.lab.tables import TARGET_ASR, TARGET_CA_TOLL, lab_row

COMMON = ["--device", "cpu", "--workers", "0"]


def parse_setting(text: str) -> tuple[str, str, dict[str, str | None]]:
    name, sep, spec = text.partition("=")
    if not sep or not spec:
        raise argparse.ArgumentTypeError(f"expected NAME=METHOD[,--flag=value...], got {text!r}")
    method, *flags = spec.split(",")
    overrides: dict[str, str | None] = {}
    for flag in flags:
        key, has_value, value = flag.partition("=")
        overrides[key] = value if has_value else None
    return name, method, overrides


def with_flags(base: list[str], overrides: dict[str, str | None]) -> list[str]:
    """``base`` flag list with each override's value replaced (or the flag appended); None = a switch."""
    out = list(base)
    for flag, value in overrides.items():
        if flag in out:
            at = out.index(flag)
            if value is not None:
                out[at + 1] = value
        else:
            out += [flag] if value is None else [flag, value]
    return out


def lab_files(lab: Path) -> WorldFiles:
    root = lab / "world"
    return WorldFiles(root / "train", root / "defense", root / "eval", root / "templates.txt", root / "world.json")


def defense_jobs(lab: Path, out: Path, settings: list, attacks: list[str], seeds: list[int]) -> list[Job]:
    defenses = make_plan(quick=False).defenses
    clean, files = lab / "models" / "clean.safetensors", lab_files(lab)
    jobs = []
    for name, method, overrides in settings:
        flags = with_flags(defenses[method], overrides)
        extra = ["--reference", str(clean)] if method_of(method) == "abd" else []
        for attack in attacks:
            for seed in seeds:
                stage = f"{name}-{attack}-s{seed}"
                argv = ["purify", str(lab / "models" / f"victim-{attack}.safetensors"), "--method", method_of(method), "--data", str(files.defense)]
                argv += ["--out", str(out / "models" / f"{stage}.safetensors"), "--run-dir", str(out / "runs" / stage), *extra, *flags, *COMMON]
                jobs.append(Job(stage, argv + ["--seed", str(seed)], out / "logs", inputs=[files.stamp]))
    return jobs


def summarise(lab: Path, out: Path, settings: list, attacks: list[str], seeds: list[int], done: dict[str, Job], parallel: int) -> list[dict]:
    opts = LabConfig(out=out, parallel=parallel)
    rows = []
    for attack in attacks:
        paths = [lab / "models" / f"victim-{attack}.safetensors"]
        paths += [out / "models" / f"{name}-{attack}-s{seed}.safetensors" for name, _, _ in settings for seed in seeds]
        results = evaluate_models(paths, lab_files(lab), opts, trigger=True, name=f"eval-{attack}")
        victim = results[0]
        for i, (name, method, overrides) in enumerate(settings):
            runs = [{**r, "seed": s} for r, s in zip(results[1 + i * len(seeds) : 1 + (i + 1) * len(seeds)], seeds)]
            row = lab_row(attack, name, runs)
            toll = victim["ca"]["1"] - row["ca"]["1"]
            seconds = [done[f"{name}-{attack}-s{seed}"].seconds for seed in seeds]
            row.update(
                method=method,
                flags=overrides,
                victim_ca=victim["ca"]["1"],
                victim_asr=victim["asr"]["1"],
                ca_toll=toll,
                meets=row["asr"]["1"] <= TARGET_ASR and toll <= TARGET_CA_TOLL + 1e-9,
                seconds=statistics.median(seconds) if all(seconds) else None,
            )
            rows.append(row)
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _spread(row: dict, key: str, k: str = "1") -> str:
    lo, hi = row[f"{key}_range"][k]
    return f"{_pct(row[key][k])} ({_pct(lo)}–{_pct(hi)})"


def render(rows: list[dict], seeds: list[int]) -> str:
    lines = [
        f"Mean (min–max) over defense seeds {seeds}; toll = victim CA@1 − defended CA@1, points; ✓ = ASR@1 ≤ 5% at toll ≤ 3.",
        "",
        "| setting | method | flags changed | attack | CA@1 | toll | ASR@1 | ASR@10 | s/run | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flags = " ".join(k if v is None else f"{k} {v}" for k, v in r["flags"].items()) or "(lab's)"
        seconds = f"{r['seconds']:.0f}" if r["seconds"] else "-"
        lines.append(
            f"| {r['defense']} | {r['method']} | `{flags}` | {r['attack']} | {_spread(r, 'ca')} | {100 * r['ca_toll']:+.1f} | "
            f"{_spread(r, 'asr')} | {_pct(r['asr']['10'])} | {seconds} | {'✓' if r['meets'] else ''} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", type=Path, required=True, help="a finished lab folder: world/, models/clean.safetensors, models/victim-ATTACK.safetensors")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--attacks", nargs="+", default=["badnet", "badclip", "sig"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--setting", dest="settings", action="append", type=parse_setting, required=True, metavar="NAME=METHOD[,--flag=value...]")
    p.add_argument("--parallel", type=int, default=2)
    args = p.parse_args()

    done = run_jobs(defense_jobs(args.lab, args.out, args.settings, args.attacks, args.seeds), parallel=args.parallel)
    failed = [job for job in done.values() if not job.ok]
    if failed:
        raise SystemExit("failed: " + "; ".join(f"{job.name} (see {job.log})" for job in failed))
    rows = summarise(args.lab, args.out, args.settings, args.attacks, args.seeds, done, args.parallel)
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "sweep.md").write_text(render(rows, args.seeds))
    print(render(rows, args.seeds))


if __name__ == "__main__":
    main()
