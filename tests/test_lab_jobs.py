"""The lab's stage runner: a signal stops the running stages the way a user stops one, resumable."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from clipsan.errors import Interrupted
from clipsan.lab.jobs import Job, run_jobs

# A stand-in for a training stage: it says when it is ready, and on SIGTERM "checkpoints" and exits 3.
STAGE = """
import pathlib, signal, sys, time
folder = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    with open(folder / "signals", "a") as log:
        log.write(f"{signum};")
    time.sleep(0.5)  # checkpointing: a second signal would be logged too
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
folder.joinpath("ready").write_text("")
time.sleep(120)
"""


class FakeStage(Job):
    def command(self, argv: list[str]) -> list[str]:
        folder = self.log_dir / self.name
        folder.mkdir(parents=True, exist_ok=True)
        return [sys.executable, "-c", STAGE, str(folder)]


def _signal_when_ready(folders: list[Path], signum: int) -> threading.Thread:
    def wait_then_signal() -> None:
        deadline = time.monotonic() + 120
        while not all((f / "ready").exists() for f in folders):
            if time.monotonic() > deadline:
                return  # the stages never started: the test fails on its own, without a stray signal
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=wait_then_signal, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_running_stage_once_and_leaves_it_resumable(tmp_path, signum):
    logs = tmp_path / "logs"
    jobs = [FakeStage(f"stage{i}", ["purify", "--run-dir", str(tmp_path / f"run{i}")], logs) for i in range(2)]
    before = signal.getsignal(signal.SIGTERM)
    # The lab runs as `clipsan lab`, a fresh process with Python's own SIGINT handler; a test run earlier in
    # this pytest worker may have left another one (a CI run once saw SIGINT ignored here, 120 s, no raise).
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    _signal_when_ready([logs / job.name for job in jobs], signum)
    try:
        with pytest.raises(Interrupted, match="run the same command again"):
            run_jobs(jobs, parallel=2)
    finally:
        signal.signal(signal.SIGINT, before_int)
    for job in jobs:
        assert (logs / job.name / "signals").read_text() == f"{int(signal.SIGTERM)};"  # one SIGTERM each, then it exited on its own
        assert json.loads(job.record_path.read_text())["returncode"] is None  # not finished: the next run resumes it
    assert signal.getsignal(signal.SIGTERM) == before  # the lab's handler is gone once it returns
