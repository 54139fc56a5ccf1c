"""Wall time of `clipsan --help` and `clipsan purify --help` in fresh processes: median of 5.

Cold runs drop the page cache before each process (needs root; skipped otherwise), warm runs
follow two warm-up runs. Give other checkouts to compare (e.g. an old commit's worktree):

    PYTHONPATH=. python benchmarks/help_time.py [CHECKOUT ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def wall(checkout: str, argv: list[str], cold: bool) -> float:
    if cold:
        subprocess.run(["sync"], check=True)
        DROP_CACHES.write_text("3\n")
    env = dict(os.environ, PYTHONPATH=checkout)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipsan", *argv], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", default=[str(Path(__file__).resolve().parents[1])])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    modes = ["warm"] + (["cold"] if os.access(DROP_CACHES, os.W_OK) else [])
    print(f"load average {os.getloadavg()[0]:.2f}; median of {args.runs} runs, seconds")
    print("| checkout | command | " + " | ".join(modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for checkout in args.checkouts:
        for argv in (["--help"], ["purify", "--help"]):
            cells = []
            for mode in modes:
                if mode == "warm":
                    for _ in range(2):
                        wall(checkout, argv, cold=False)
                cells.append(f"{statistics.median(wall(checkout, argv, mode == 'cold') for _ in range(args.runs)):.3f}")
            print(f"| {checkout} | clipsan {' '.join(argv)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
