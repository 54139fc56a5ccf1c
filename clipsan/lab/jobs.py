"""Run the lab's stages as real `clipsan` processes, side by side, respecting dependencies.

A stage that finished in an earlier run of the same lab folder is reused when
its command line and the files it reads are unchanged (``Job.fingerprint``);
one that was interrupted is continued with ``--resume``; anything else starts
over in a clean run directory. A stage outlives no lab: if the lab is killed, each
running stage gets SIGTERM (it checkpoints and exits 3), so the next run finds no
stray process holding a run directory.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from clipsan import __version__
from clipsan.atomic import atomic_write_bytes, write_errors
from clipsan.checkpoints import sha256_file
from clipsan.errors import Interrupted

STOP_GRACE_SECONDS = 120  # a stage writes its checkpoint before exiting 3; a ViT-sized one takes a while
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


@dataclass
class Job:
    name: str
    argv: list[str]  # clipsan arguments, without the program name
    log_dir: Path
    after: list[str] = field(default_factory=list)  # jobs that must have succeeded first
    ok_codes: tuple[int, ...] = (0,)
    inputs: list[Path] = field(default_factory=list)  # files it reads that argv does not name (the world's stamp)
    resumable: bool = True  # a training command (purify, poison) takes --resume; scan does not
    # CPU threads: one for stages that run side by side; a stage that runs alone (the clean model, the
    # final evaluation) takes every slot's core (2 threads: clean model 1.6x faster, BENCHMARKS.md)
    threads: int = 1
    returncode: int | None = None
    seconds: float = 0.0
    reused: bool = False

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def report_path(self) -> Path:
        return self.log_dir / f"{self.name}.json"

    @property
    def record_path(self) -> Path:
        return self.log_dir / f"{self.name}.stage.json"

    @property
    def ok(self) -> bool:
        return self.returncode in self.ok_codes

    def report(self) -> dict:
        return json.loads(self.report_path.read_text())

    def last_error(self) -> str:
        """The stage's own one-line error from its log (": clipsan CMD: FILE: cause"), or ""."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        said = [line for line in lines if line.startswith("clipsan ") and ": " in line]
        return f": {said[-1]}" if said else ""

    def _flag(self, name: str) -> Path | None:
        return Path(self.argv[self.argv.index(name) + 1]) if name in self.argv else None

    def fingerprint(self, digests: dict[Path, str]) -> str:
        """The command line and every input file it names (models, patches), by content.

        Paths inside the lab folder (the parent of ``log_dir``) count relative to it, so a lab
        folder copied or moved elsewhere keeps its finished stages.
        """
        out = self._flag("--out")
        inputs = [Path(arg) for arg in self.argv if Path(arg).is_file() and Path(arg) != out] + self.inputs
        for path in inputs:
            if path not in digests:
                digests[path] = sha256_file(path)
        root = str(self.log_dir.parent)
        argv = ["<lab>" + arg[len(root) :] if arg == root or arg.startswith(root + os.sep) else arg for arg in self.argv]
        blob = json.dumps([__version__, argv, [digests[path] for path in inputs]])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _record(self) -> dict:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}

    def finished_before(self, fingerprint: str) -> bool:
        record = self._record()
        out = self._flag("--out")
        return (
            record.get("fingerprint") == fingerprint
            and record.get("returncode") in self.ok_codes
            and self.report_path.is_file()
            and (out is None or out.is_file())
        )

    def drop_checkpoints(self) -> None:
        """A finished stage has written its model; its resume checkpoints (~200 MB each) only fill the disk."""
        run_dir = self._flag("--run-dir")
        if run_dir is not None:
            for folder in sorted(run_dir.glob("**/checkpoints")):  # ABD's craft stage keeps its own
                shutil.rmtree(folder, ignore_errors=True)

    def start(self, fingerprint: str) -> subprocess.Popen:
        argv = list(self.argv)
        run_dir = self._flag("--run-dir")
        if run_dir is not None and run_dir.exists():
            if self.resumable and self._record().get("fingerprint") == fingerprint:
                argv.append("--resume")  # the same stage, interrupted: continue it
            else:
                shutil.rmtree(run_dir)  # left by other settings: start over
        with write_errors(self.log_dir):
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self._write_record({"fingerprint": fingerprint, "returncode": None})
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        cmd = self.command(argv)
        with write_errors(self.log):
            log = open(self.log, "w")  # noqa: SIM115 - the child writes it; closed when this process exits
            log.write(" ".join(cmd) + "\n\n")
            log.flush()
        # A session of its own: a Ctrl-C at the terminal reaches the lab alone, which then stops
        # each stage with exactly one SIGTERM (a second signal would make a stage skip its checkpoint).
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True, preexec_fn=_stop_with(os.getpid()))

    def command(self, argv: list[str]) -> list[str]:
        return [sys.executable, "-m", "clipsan", *argv, "--format", "json", "--output", str(self.report_path)]

    def finish(self, fingerprint: str, returncode: int, seconds: float) -> None:
        self.returncode, self.seconds = returncode, seconds
        self._write_record({"fingerprint": fingerprint, "returncode": returncode, "seconds": seconds})

    def _write_record(self, record: dict) -> None:
        atomic_write_bytes(self.record_path, json.dumps(record).encode())


def _stop_with(lab_pid: int):
    """What a stage runs before its program (Linux): SIGTERM it when the lab dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None

    def stop_with_lab() -> None:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != lab_pid:  # the lab died before the line above: no one will resume this stage's result
            os.kill(os.getpid(), signal.SIGTERM)

    return stop_with_lab


def run_jobs(jobs: list[Job], parallel: int = 2) -> dict[str, Job]:
    """Run every job whose dependencies succeeded, at most ``parallel`` at a time; returns all jobs by name.

    SIGINT/SIGTERM stop the running stages the way a user stops one (they checkpoint and exit 3)
    and raise Interrupted: the same lab folder run again continues them with ``--resume``.
    """
    running: dict[str, tuple[Job, subprocess.Popen, float, str]] = {}
    previous = _raise_on_sigterm()
    try:
        return _run(jobs, parallel, running)
    except KeyboardInterrupt:
        _stop(running)
        raise Interrupted("lab interrupted; run the same command again (same --out) to continue where it stopped") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm():
    """SIGTERM (a scheduler, `kill`) ends the lab like Ctrl-C; returns the handler to restore."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _stop(running: dict[str, tuple[Job, subprocess.Popen, float, str]]) -> None:
    """SIGTERM every running stage, wait for its checkpoint, kill what does not exit in time.

    Their stage records keep ``returncode: None``: the next run resumes them.
    """
    for _job, proc, _started, _fingerprint in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for _job, proc, _started, _fingerprint in running.values():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run(jobs: list[Job], parallel: int, running: dict[str, tuple[Job, subprocess.Popen, float, str]]) -> dict[str, Job]:
    pending = {job.name: job for job in jobs}
    done: dict[str, Job] = {}
    digests: dict[Path, str] = {}
    while pending or running:
        for name in list(pending):
            job = pending[name]
            if any(dep in done and not done[dep].ok for dep in job.after):
                job.returncode = -1  # a dependency failed: never started
                done[name] = pending.pop(name)
            elif len(running) < parallel and all(dep in done for dep in job.after):
                fingerprint = job.fingerprint(digests)
                if job.finished_before(fingerprint):
                    record = job._record()
                    job.returncode, job.seconds, job.reused = record["returncode"], record.get("seconds", 0.0), True
                    done[name] = pending.pop(name)
                    continue
                running[name] = (job, job.start(fingerprint), time.perf_counter(), fingerprint)
                pending.pop(name)
        for name, (job, proc, started, fingerprint) in list(running.items()):
            if proc.poll() is not None:
                job.finish(fingerprint, proc.returncode, round(time.perf_counter() - started, 1))
                if job.returncode == 0:
                    job.drop_checkpoints()
                done[name] = running.pop(name)[0]
        time.sleep(0.1)
    return done
