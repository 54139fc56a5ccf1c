"""Which files a dataset may read: those really inside the folder the user handed over.

A downloaded manifest can name ``/etc/passwd`` or ``../../.ssh/id_rsa``, and a
downloaded archive can hold a symlink to either. By default a path is read only
if its real location (symlinks resolved) is inside the data folder; the others
are skipped and counted as ``outside_root``. ``--allow-outside-root`` lifts this
for manifests that really do point elsewhere (images on another disk).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from clipsan.data.skips import MISSING_FILE, OUTSIDE_ROOT, count


class DataRoot:
    """The folder a dataset's files must live in, and the check applied to each of them."""

    def __init__(self, folder: str | os.PathLike, allow_outside: bool = False):
        self.folder = os.path.realpath(folder)
        self.allow_outside = allow_outside
        self._prefix = _with_separator(self.folder)
        self._real_dirs: dict[str, str] = {}  # a manifest names many files per folder: resolve each folder once

    def locate(self, path: str) -> tuple[str, str | None]:
        """(real path, None) for a regular file that may be read; else (path, why not: outside_root or missing_file).

        One lstat per file (as many as checking that it exists): folders are resolved
        once, and only a file that is itself a link is resolved on its own. A path
        outside the folder is not even looked at.
        """
        if "\0" in path:  # no file has such a name (and the OS calls below would raise on it)
            return path, MISSING_FILE
        directory, separator, name = path.rpartition(os.sep)  # os.path.split's result, at a third of its cost
        if name in ("", os.curdir, os.pardir):
            candidate = os.path.realpath(path)
        else:
            real_dir = self._real_dirs.get(directory)
            if real_dir is None:
                real_dir = self._real_dirs[directory] = _with_separator(os.path.realpath(directory or separator or os.curdir))
            candidate = real_dir + name
        if not self.allows(candidate):
            return candidate, OUTSIDE_ROOT
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            return candidate, MISSING_FILE
        if stat.S_ISLNK(mode):
            real = os.path.realpath(candidate)
            if not self.allows(real):
                return real, OUTSIDE_ROOT
            return real, None if os.path.isfile(real) else MISSING_FILE
        # Only regular files: a FIFO or a device would block or never end when read.
        return candidate, None if stat.S_ISREG(mode) else MISSING_FILE

    def allows(self, real_path: str) -> bool:
        return self.allow_outside or real_path == self.folder or real_path.startswith(self._prefix)


def _with_separator(folder: str) -> str:
    return folder if folder.endswith(os.sep) else folder + os.sep


def walk_once(top: str, data_root: DataRoot, skipped: dict[str, int]) -> Iterator[tuple[str, list[str]]]:
    """(folder, file names) under ``top``, sorted, entering each real folder once; hidden entries skipped.

    Links are followed, so a class folder may be a link to its images, but a link
    loop (``cat/again -> .``) or a second link to the same folder adds nothing. A
    folder whose real path ``data_root`` does not admit is not entered (counted
    once as ``outside_root``).
    """
    seen: set[str] = set()
    for folder, subdirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen or not data_root.allows(real):
            if real not in seen:
                count(skipped, OUTSIDE_ROOT)
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        yield folder, sorted(f for f in files if not f.startswith("."))


def outside_hint(skipped: dict[str, int]) -> str:
    """What to add to a message that reports outside_root skips."""
    return "; files outside the data folder are read only with --allow-outside-root" if skipped.get(OUTSIDE_ROOT) else ""
