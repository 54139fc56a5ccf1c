"""Run the lab's stages as real `clipsan` processes, side by side, respecting dependencies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    name: str
    argv: list[str]  # clipsan arguments, without the program name
    log_dir: Path
    after: list[str] = field(default_factory=list)  # jobs that must have succeeded first
    ok_codes: tuple[int, ...] = (0,)
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def report_path(self) -> Path:
        return self.log_dir / f"{self.name}.json"

    @property
    def ok(self) -> bool:
        return self.returncode in self.ok_codes

    def report(self) -> dict:
        return json.loads(self.report_path.read_text())

    def drop_checkpoints(self) -> None:
        """A finished stage has written its model; its resume checkpoints (~200 MB each) only fill the disk."""
        if "--run-dir" in self.argv:
            run_dir = Path(self.argv[self.argv.index("--run-dir") + 1])
            for folder in sorted(run_dir.glob("**/checkpoints")):  # ABD's craft stage keeps its own
                shutil.rmtree(folder, ignore_errors=True)

    def start(self) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "clipsan", *self.argv, "--format", "json", "--output", str(self.report_path)]
        log = open(self.log, "w")
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)


def run_jobs(jobs: list[Job], parallel: int = 2) -> dict[str, Job]:
    """Run every job whose dependencies succeeded, at most ``parallel`` at a time; returns all jobs by name."""
    pending = {job.name: job for job in jobs}
    done: dict[str, Job] = {}
    running: dict[str, tuple[Job, subprocess.Popen, float]] = {}
    while pending or running:
        for name in list(pending):
            job = pending[name]
            if any(dep in done and not done[dep].ok for dep in job.after):
                job.returncode = -1  # a dependency failed: never started
                done[name] = pending.pop(name)
            elif len(running) < parallel and all(dep in done for dep in job.after):
                running[name] = (job, job.start(), time.perf_counter())
                pending.pop(name)
        for name, (job, proc, started) in list(running.items()):
            if proc.poll() is not None:
                job.returncode, job.seconds = proc.returncode, round(time.perf_counter() - started, 1)
                if job.returncode == 0:
                    job.drop_checkpoints()
                done[name] = running.pop(name)[0]
        time.sleep(0.1)
    return done
