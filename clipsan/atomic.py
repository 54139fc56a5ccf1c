"""Writing files so that a final name only ever holds a complete file, and a write that fails
says so in one line (no torch: the command line writes its reports with it too).

* ``write_errors(path)``: the one place a failed write becomes the user's message. Around every
  write clipsan makes, an OSError (full disk, I/O error, read-only folder), the RuntimeError of
  PyTorch's zip writer or the SafetensorError of safetensors' Rust writer becomes
  ``UserError("PATH: cannot write (CAUSE)")`` (exit 2), CAUSE read from the error's errno.
* ``atomic_path`` / ``atomic_file`` / ``atomic_write_bytes`` / ``write_json``: a temporary file
  beside the final name, fsync, then rename; the temporary file is removed on failure.
* ``append_line``: a line added to a log (metrics.jsonl), or nothing if the write fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path
from typing import BinaryIO

from clipsan import strict_json
from clipsan.errors import UserError

# How the writers of the weights formats report a failed write. PyTorch's zip writer does not carry
# the OS error (it says "unexpected pos N vs M" when a write came up short), so torch files are
# written through a Python file object (``atomic_file``) whose own OSError is kept instead.
_SAFETENSORS_IO = re.compile(r"I/O error: (.+?) \(os error (\d+)\)")
_TORCH_WRITER = ("inline_container", "PytorchStreamWriter", "file write failed")


def _cause(err: BaseException) -> str | None:
    """What went wrong, as the OS says it ("No space left on device"), or None if ``err`` is no write failure."""
    text = str(err)
    if isinstance(err, OSError):
        if err.errno:
            return err.strerror or os.strerror(err.errno)
        return text.splitlines()[0] if text else type(err).__name__
    if type(err).__name__ == "SafetensorError":
        found = _SAFETENSORS_IO.search(text)
        return found.group(1) if found else text.splitlines()[0] if text else "safetensors could not write the file"
    if isinstance(err, RuntimeError) and any(marker in text for marker in _TORCH_WRITER):
        return f"PyTorch's writer failed: {text.splitlines()[0]}"
    return None


@contextlib.contextmanager
def write_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """A failed write inside becomes ``UserError("PATH: cannot write (CAUSE)")``; anything else passes through."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        cause = _cause(err)
        if cause is None:
            raise
        raise UserError(f"{path}: cannot write ({cause})") from None


@contextlib.contextmanager
def removed_on_failure(path: str | os.PathLike[str]) -> Iterator[None]:
    """``write_errors`` for a file written in place (not atomically: thousands of small ones): a failed
    write removes it, so no final name holds a partial file."""
    with write_errors(path):
        try:
            yield
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist a rename inside ``path``; best effort where a platform cannot fsync folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path, kind: str = "tmp") -> Path:
    """The hidden sibling a write goes to before it is renamed into place (never a final name).

    Those a killed process left for the same final name are removed first: a model-sized file
    must not stay behind each time a run is killed while writing its output."""
    for stale in path.parent.glob(f".{glob_escape(path.name)}.{kind}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of ``temporary_name``'s (left behind only by a killed process)."""
    return name.startswith(".") and re.search(r"\.(tmp|old)-\d+$", name) is not None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it is fsynced and renamed to ``path``,
    on failure removed (and a failed write reported as ``write_errors`` does)."""
    path = Path(path)
    tmp = temporary_name(path)
    with write_errors(path):
        try:
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)


class _KeptErrors:
    """A binary file whose writes keep their OSError: a C++ writer (torch.save) that calls ``write``
    replaces it with its own RuntimeError, which does not say what went wrong."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.raw.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as err:
            self.error = err
            raise


@contextlib.contextmanager
def open_for_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """``path`` open for a writer that takes a file object (``torch.save``); if the writer fails after
    a write did, the write's OSError (its errno: a full disk, an I/O error) is what is raised."""
    with open(path, "wb") as raw:
        kept = _KeptErrors(raw)
        try:
            yield kept  # type: ignore[misc]
            raw.flush()
        except Exception as err:
            if kept.error is not None and kept.error is not err:
                raise kept.error from None
            raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """``atomic_path`` as an open binary file (``open_for_writer``)."""
    with atomic_path(path) as tmp, open_for_writer(tmp) as fh:
        yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike[str], document, indent: int = 2) -> None:
    """A strict JSON document (``clipsan.strict_json``), atomically."""
    atomic_write_bytes(path, (strict_json.dumps(document, indent=indent, sort_keys=True) + "\n").encode())


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Add ``line`` to a log; if the write fails the log is cut back to where it was (no torn line).

    Unbuffered: a buffer that kept the unwritten rest would write it after the cut, on close."""
    path = Path(path)
    data = line.encode() + b"\n"
    with write_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data) :]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
