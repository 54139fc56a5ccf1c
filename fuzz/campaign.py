"""``python -m fuzz.campaign``: the long campaign, target after target, resumable.

    python -m fuzz.campaign [--runs 1000000] [--out ~/.cache/clipsan-fuzz] [TARGET...]

Each target runs under libFuzzer for ``--runs`` inputs from its working corpus
(OUT/corpus/TARGET, seeded from fuzz/corpus/TARGET and grown by every run, so a
second campaign continues where the first stopped). A crash, hang or traceback
stops that target: its input is in OUT/crashes/TARGET/ (copy it to
fuzz/regressions/TARGET/ with the fix). libFuzzer's -timeout is wall-clock, so on a loaded machine
(the campaign runs niced beside other work) a starved process "hangs" on an ordinary input: a
timeout is run again alone, and one whose input takes well under the limit in CPU time is
recorded as ``starved`` (no finding; the input stays in OUT/crashes/TARGET/ to re-check by hand). Every run appends a line to OUT/runs.jsonl
(target, inputs executed, cov, ft, seconds, outcome); ``--table`` prints the totals
per target as the Markdown table docs/fuzzing.md keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fuzz import seeds

REPO = Path(__file__).resolve().parents[1]
STATS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")
DONE = re.compile(r"^Done (\d+) runs in (\d+) second")
INTERRUPTED = 72  # libFuzzer's exit code after SIGINT: the campaign was stopped, nothing was found
TIMEOUT_SECONDS = 20  # fuzz/__main__.py's -timeout
STARVED_BELOW = 0.1  # a "timeout" whose input runs alone in under this share of the limit (CPU time) was starvation


def _target_names() -> list[str]:
    # The names without importing the targets (that imports torch): fuzz/corpus's folders.
    return sorted(p.name for p in seeds.CORPUS.iterdir() if p.is_dir())


def run_target(name: str, runs: int, out: Path, extra: list[str]) -> dict:
    corpus, crashes = out / "corpus" / name, out / "crashes" / name
    crashes.mkdir(parents=True, exist_ok=True)
    if not corpus.is_dir():
        shutil.copytree(seeds.CORPUS / name, corpus)
    log = out / f"{name}.log"
    cmd = [sys.executable, "-m", "fuzz", name, str(corpus), f"-runs={runs}", f"-artifact_prefix={crashes}/", "-print_final_stats=1", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), OMP_NUM_THREADS="1")
    started = time.time()
    with open(log, "w") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=out)
    record = {"target": name, "returncode": code, "seconds": round(time.time() - started), "inputs": 0, "cov": None, "ft": None}
    for line in log.read_text(errors="replace").splitlines():
        if (m := STATS.match(line)) is not None:
            record.update(inputs=int(m.group(1)), cov=int(m.group(2)), ft=int(m.group(3)))
        elif (m := DONE.match(line)) is not None:
            record["inputs"] = int(m.group(1))
    record["outcome"] = {0: "done", INTERRUPTED: "interrupted (Ctrl-C): continue later"}.get(code, f"finding (exit {code}): see {log} and {crashes}")
    timeouts = [p for p in crashes.glob("timeout-*") if p.stat().st_mtime >= started]
    if code not in (0, INTERRUPTED) and timeouts:
        cpu = max(_cpu_seconds(name, p, env) for p in timeouts)
        if cpu < STARVED_BELOW * TIMEOUT_SECONDS:
            record["outcome"] = f"starved: a wall-clock timeout whose input runs alone in {cpu:.2f} s CPU (limit {TIMEOUT_SECONDS} s); not a finding"
            record["starved"] = True
    with open(out / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def _cpu_seconds(name: str, path: Path, env: dict) -> float:
    """CPU seconds the target takes on one input in a fresh process (imports excluded)."""
    script = (
        "import sys, time; from pathlib import Path; from fuzz.targets import TARGETS, run_one; "
        "data = Path(sys.argv[2]).read_bytes(); started = time.process_time(); "
        "run_one(TARGETS[sys.argv[1]], data); print(time.process_time() - started)"
    )
    proc = subprocess.run([sys.executable, "-c", script, name, str(path)], capture_output=True, text=True, env=env)
    return float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else float("inf")


def table(out: Path) -> str:
    """Per target: inputs over every run, the last run's coverage, how many runs stopped on a finding."""
    totals: dict[str, dict] = {}
    for line in (out / "runs.jsonl").read_text().splitlines():
        r = json.loads(line)
        t = totals.setdefault(r["target"], {"inputs": 0, "seconds": 0, "stops": 0, "starved": 0, "cov": None, "ft": None})
        t["inputs"] += r["inputs"]
        t["seconds"] += r["seconds"]
        t["starved"] += bool(r.get("starved"))
        t["stops"] += r["returncode"] not in (0, INTERRUPTED) and not r.get("starved")
        t["cov"], t["ft"] = r["cov"] or t["cov"], r["ft"] or t["ft"]
    rows = ["| target | inputs | cov | ft | runs stopped by a finding | by starvation | wall time |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, t in sorted(totals.items()):
        rows.append(f"| {name} | {t['inputs']:,} | {t['cov']} | {t['ft']} | {t['stops']} | {t['starved']} | {t['seconds'] / 60:.0f} min |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target in this campaign")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "clipsan-fuzz", help="working corpus, crashes, logs")
    parser.add_argument("--table", action="store_true", help="print the totals so far and exit")
    args, extra = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table(args.out))
        return
    for name in args.targets or _target_names():
        record = run_target(name, args.runs, args.out.resolve(), extra)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
