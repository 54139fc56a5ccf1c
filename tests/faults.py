"""Fault injection for the promises of DESIGN §8 (a write that fails loses nothing; a kill at any
moment loses nothing): a disk that fails the Nth write under a folder, what a user may check
after it, and SIGKILL of a command (and every process it started) at a seeded moment.

``FaultyDisk(root, fail_at=N, error=errno.ENOSPC)`` patches, in this process, every way clipsan's
bytes reach the OS under ``root``: files opened for writing (Python's open; a file that fails
takes half of its first write, then raises, as a filling disk does), ``os.open`` for writing
(the first ``os.write`` is short, the next raises), safetensors' Rust writer (half a file, then
its SafetensorError), ``os.replace``, ``os.mkdir`` of a new folder and ``os.fsync`` of a file.
Each of these is one write; the Nth raises. ``fail_at=None`` only counts them.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from clipsan.atomic import is_temporary

ERRORS = (errno.ENOSPC, errno.EIO, errno.EROFS)


class _FailingFile:
    """A real file whose first write stores half its bytes and then fails (a disk filling up)."""

    def __init__(self, raw, error: OSError):
        self._raw, self._error, self._wrote = raw, error, False

    def write(self, data):
        if not self._wrote:
            self._wrote = True
            self._raw.write(bytes(data)[: max(1, len(data) // 2)] if not isinstance(data, str) else data[: max(1, len(data) // 2)])
            self._raw.flush()
        raise self._error

    def flush(self):
        self._raw.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._raw.close()

    def __getattr__(self, name):
        return getattr(self._raw, name)


class FaultyDisk:
    """Counts the writes under ``root`` and fails the ``fail_at``-th with ``error`` (an errno)."""

    def __init__(self, root: Path, fail_at: int | None = None, error: int = errno.ENOSPC):
        self.root = os.path.abspath(root)
        self.fail_at, self.errno = fail_at, error
        self.writes: list[tuple[str, str]] = []  # (kind, path) of each write, in order
        self.failed: tuple[str, str] | None = None
        self._fds: dict[int, str] = {}
        self._short: set[int] = set()  # fds whose next os.write fails (their first was short)
        self._saved: list[tuple[object, str, object]] = []

    # -- counting ----------------------------------------------------------------------

    def _under_root(self, path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(self.root + os.sep)
        except TypeError:
            return False  # a file descriptor or a file object

    def _hit(self, kind: str, path) -> bool:
        """Book one write; whether it is the one that fails."""
        self.writes.append((kind, os.fspath(path)))
        if self.fail_at is not None and len(self.writes) == self.fail_at:
            self.failed = (kind, os.fspath(path))
            return True
        return False

    def error(self) -> OSError:
        return OSError(self.errno, os.strerror(self.errno))

    # -- the patched primitives ------------------------------------------------------------

    def _open(self, real):
        def faulty_open(file, mode="r", *args, **kwargs):
            writing = any(flag in mode for flag in "wax+")
            if not (writing and self._under_root(file)) or not self._hit("open", file):
                return real(file, mode, *args, **kwargs)
            if self.errno == errno.EROFS:
                raise self.error()
            return _FailingFile(real(file, mode, *args, **kwargs), self.error())

        return faulty_open

    def _os_open(self, real):
        def faulty_os_open(path, flags, *args, **kwargs):
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND)
            if writing and self._under_root(path) and self._hit("os.open", path):
                if self.errno == errno.EROFS:
                    raise self.error()
                fd = real(path, flags, *args, **kwargs)
                self._short.add(fd)
                self._fds[fd] = os.fspath(path)
                return fd
            fd = real(path, flags, *args, **kwargs)
            if self._under_root(path):
                self._fds[fd] = os.fspath(path)
            return fd

        return faulty_os_open

    def _os_write(self, real):
        def faulty_os_write(fd, data):
            if fd in self._short:
                self._short.discard(fd)
                self._fds.pop(fd, None)
                real(fd, bytes(data)[: max(1, len(data) // 2)])
                raise self.error()
            return real(fd, data)

        return faulty_os_write

    def _os_fsync(self, real):
        def faulty_fsync(fd):
            path = self._fds.get(fd)
            if path is not None and os.path.isfile(path) and self._hit("fsync", path):
                raise self.error()
            return real(fd)

        return faulty_fsync

    def _os_close(self, real):
        def faulty_close(fd):
            self._fds.pop(fd, None)
            self._short.discard(fd)
            return real(fd)

        return faulty_close

    def _os_replace(self, real):
        def faulty_replace(src, dst, *args, **kwargs):
            if self._under_root(dst) and self._hit("rename", dst):
                raise self.error()
            return real(src, dst, *args, **kwargs)

        return faulty_replace

    def _os_mkdir(self, real):
        def faulty_mkdir(path, *args, **kwargs):
            if self._under_root(path) and not os.path.exists(path) and self._hit("mkdir", path):
                raise self.error()
            return real(path, *args, **kwargs)

        return faulty_mkdir

    def _save_file(self, real):
        def faulty_save_file(tensors, filename, metadata=None):
            if self._under_root(filename) and self._hit("safetensors", filename):
                from safetensors.torch import save

                data = save(tensors, metadata=metadata)
                with open(filename, "wb") as fh:  # the real open: this is the Rust writer's own file
                    fh.write(data[: len(data) // 2])
                raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(self.errno)} (os error {self.errno})")
            return real(tensors, filename, metadata=metadata)

        return faulty_save_file

    def __enter__(self) -> FaultyDisk:
        import safetensors.torch

        import clipsan.tensor_files

        real_open = builtins.open
        self._patch(builtins, "open", self._open(real_open))
        self._patch(io, "open", self._open(real_open))
        for name, make in (("open", self._os_open), ("write", self._os_write), ("fsync", self._os_fsync), ("close", self._os_close)):
            self._patch(os, name, make(getattr(os, name)))
        self._patch(os, "replace", self._os_replace(os.replace))
        self._patch(os, "mkdir", self._os_mkdir(os.mkdir))
        real_save = safetensors.torch.save_file
        for module in (safetensors.torch, clipsan.tensor_files):
            self._patch(module, "save_file", self._save_file(real_save))
        return self

    def _patch(self, owner, name: str, value) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __exit__(self, *exc) -> None:
        for owner, name, value in reversed(self._saved):
            setattr(owner, name, value)
        self._saved.clear()


# --------------------------------------------------------------------------- what a user checks


ONE_LINE = re.compile(r"^clipsan ([\w-]+): (\S.*): cannot write \((.+)\)$")


def assert_one_line_write_error(stderr: str, command: str, disk: FaultyDisk) -> str:
    """The last stderr line is clipsan's one line naming a file under the disk's root and the cause; no traceback."""
    assert "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    match = ONE_LINE.match(last)
    assert match, f"not one line naming the file and the cause: {last!r} (write {disk.failed})"
    assert match.group(1) == command
    assert match.group(3) == os.strerror(disk.errno), last
    named = os.path.abspath(match.group(2))
    assert named.startswith(disk.root + os.sep) or named == disk.root, f"{named} is not under {disk.root}"
    return named


def temporary_leftovers(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if is_temporary(p.name)]


def incomplete_files(root: Path) -> list[str]:
    """Every file under a final name must be whole: weights load, JSON parses, every log line
    parses, images decode, training states unpickle (they are our own files)."""
    bad = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or is_temporary(path.name) or any(is_temporary(part) for part in path.parts):
            continue
        try:
            if path.suffix == ".safetensors":
                load_file(str(path))
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                for line in path.read_text().splitlines():
                    json.loads(line)
            elif path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
            elif path.name == "state.pt":
                torch.load(path, weights_only=False)
        except Exception as err:
            bad.append(f"{path}: {type(err).__name__}: {err}")
    return bad


def same_tensors(a: Path, b: Path) -> list[str]:
    """Names of the tensors that differ (bitwise) between two safetensors files."""
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    return [k for k in wa if not torch.equal(wa[k], wb[k])]


def scan_report(path: Path, root: Path) -> dict:
    """A scan.json without what differs from one run to the next (times, the run's own folder)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("seconds", "started_utc", "run_dir")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value.replace(str(root), "ROOT") if isinstance(value, str) else value

    return strip(json.loads(path.read_text()))


def sweep_points(total: int, seed: int, full: bool, count: int) -> list[int]:
    """Which writes to fail: every one (a full sweep) or ``count`` seeded ones, always the first and last."""
    if full or total <= count:
        return list(range(1, total + 1))
    rng = random.Random(seed)
    return sorted({1, total, *rng.sample(range(2, total), count - 2)})


def full_sweep() -> bool:
    """CLIPSAN_FAULT_SWEEP=full: every write and many kill moments (hours); else CI's seeded few."""
    return os.environ.get("CLIPSAN_FAULT_SWEEP", "") == "full"


# --------------------------------------------------------------------------- kills


def descendants(pid: int) -> list[int]:
    """Every process started by ``pid`` (any depth, new sessions included), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_machine(proc: subprocess.Popen) -> None:
    """SIGKILL the command and everything it started at once, as a power cut would."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def kill_at(proc: subprocess.Popen, seconds: float) -> bool:
    """Kill ``proc`` (and its processes) ``seconds`` after it started; False if it had finished by then."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    if proc.poll() is not None:
        return False
    kill_machine(proc)
    return True
