"""bf16 against fp32: the zero-shot CA a defense ends with, and how far two fp32 seeds already differ.

    OMP_NUM_THREADS=1 python benchmarks/precision_ca.py --lab /work/labs/full-main [--victim victim-badnet]

Runs ``clipsan purify`` (ft, cleanclip, abd with the lab's defense settings, on the lab's
defense set) from a lab victim under --precision fp32 with seeds 0 and 1 and under bf16
(CPU autocast, the GPU's precision path) with seed 0, evaluates every output on the lab's
eval set with its templates, and prints CA@1 / ASR@1 per run and the two gaps: |bf16 - fp32|
and |fp32 seed 1 - fp32 seed 0|. The test tolerance (tests/test_precision.py) and BENCHMARKS.md
come from this table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clipsan.lab.plan import make_plan

METHODS = ("ft", "cleanclip", "abd")


def _clipsan(*args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "clipsan", *map(str, args), "--format", "json"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"clipsan {args[0]} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", type=Path, required=True, help="a finished lab directory (models/, world/)")
    parser.add_argument("--victim", default="victim-badnet", help="model in LAB/models to defend (default: victim-badnet)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--work", type=Path, default=None, help="where run dirs and outputs go (default: a temporary folder)")
    opts = parser.parse_args()

    plan = make_plan(quick=False)
    models, world = opts.lab / "models", opts.lab / "world"
    victim, clean = models / f"{opts.victim}.safetensors", models / "clean.safetensors"
    # models and checkpoints run to gigabytes: a default folder goes when `scratch` does (main's return, or exit)
    scratch = None if opts.work else tempfile.TemporaryDirectory(prefix="precision-ca-")
    work = opts.work or Path(scratch.name)
    runs = [("fp32", 0), ("bf16", 0), ("fp32", 1)]
    rows = []
    for method in opts.methods.split(","):
        results = {}
        for precision, seed in runs:
            name = f"{method}-{precision}-seed{seed}"
            extra = ["--reference", clean] if method == "abd" else []
            started = time.perf_counter()
            _clipsan("purify", victim, "--method", method, "--data", world / "defense", "--out", work / f"{name}.safetensors", "--run-dir", work / name,
                     "--precision", precision, "--seed", seed, "--device", "cpu", "--workers", "0", *extra, *plan.defenses[method])  # fmt: skip
            seconds = time.perf_counter() - started
            report = _clipsan("eval", work / f"{name}.safetensors", "--data", world / "eval", "--templates", world / "templates.txt",
                              "--trigger", "from-metadata", "--device", "cpu")  # fmt: skip
            row = report["models"][0]
            results[(precision, seed)] = (row["ca"]["1"], row["asr"]["1"])
            print(f"{name}: CA@1 {row['ca']['1']:.4f} ASR@1 {row['asr']['1']:.4f} ({seconds:.0f} s)", file=sys.stderr)
        (ca32, asr32), (ca16, asr16), (ca32b, _) = (results[r] for r in runs)
        rows.append((method, ca32, ca16, ca32b, abs(ca16 - ca32), abs(ca32b - ca32), asr32, asr16))

    print(f"victim {victim}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
    print("| method | CA@1 fp32 | CA@1 bf16 | CA@1 fp32 seed 1 | abs(bf16 - fp32) | abs(seed 1 - seed 0) | ASR@1 fp32 | ASR@1 bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for method, ca32, ca16, ca32b, gap16, gap_seed, asr32, asr16 in rows:
        print(f"| {method} | {ca32:.4f} | {ca16:.4f} | {ca32b:.4f} | {gap16:.4f} | {gap_seed:.4f} | {asr32:.4f} | {asr16:.4f} |")


if __name__ == "__main__":
    main()
