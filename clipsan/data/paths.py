"""Which files a dataset may read: those really inside the folder the user handed over.

A downloaded manifest can name ``/etc/passwd`` or ``../../.ssh/id_rsa``, and a
downloaded archive can hold a symlink to either. By default a path is read only
if its real location (symlinks resolved) is inside the data folder; the others
are skipped and counted as ``outside_root``. ``--allow-outside-root`` lifts this
for manifests that really do point elsewhere (images on another disk).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from clipsan.data.skips import count

OUTSIDE_ROOT = "outside_root"


class DataRoot:
    """The folder a dataset's files must live in, and the check applied to each of them."""

    def __init__(self, folder: str | os.PathLike, allow_outside: bool = False):
        self.folder = os.path.realpath(folder)
        self.allow_outside = allow_outside
        self._prefix = self.folder if self.folder.endswith(os.sep) else self.folder + os.sep
        self._real_dirs: dict[str, str] = {}  # a manifest names many files per folder: resolve each folder once

    def admits(self, path: str) -> bool:
        """Whether ``path`` may be read: it really lies inside the folder, or outside paths are allowed."""
        return self.allow_outside or self.contains(self.real_path(path))

    def allows(self, real_path: str) -> bool:
        return self.allow_outside or self.contains(real_path)

    def contains(self, real_path: str) -> bool:
        return real_path == self.folder or real_path.startswith(self._prefix)

    def real_path(self, path: str) -> str:
        directory, name = os.path.split(path)
        real_dir = self._real_dirs.get(directory)
        if real_dir is None:
            real_dir = self._real_dirs[directory] = os.path.realpath(directory or os.curdir)
        candidate = os.path.normpath(os.path.join(real_dir, name))
        return os.path.realpath(candidate) if os.path.islink(candidate) else candidate


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
