"""CPU training: how glibc's malloc treats the gigabytes of activations a step frees.

An eager CPU training step allocates and frees gigabytes of activations (RN50 cleanclip at
batch 16: about 4 GB). glibc serves a block over its mmap threshold (adaptive, at most 32 MB)
with a fresh ``mmap`` and unmaps it on ``free``, so each step page-faults much of its working
set again and the kernel zeroes it (BENCHMARKS.md, "Memory on CPU"). For eager training
(``keep_freed_memory``), with mmap off and trimming off, glibc reuses its heap and a step after
the first faults almost nothing: about 1.2x the steps per CPU second on RN50. The price is that
the process keeps its peak resident between steps, plus the heap's fragmentation.

A ``--compile``d step plans its own buffers and was measured no faster with the kept heap,
which it fragments by ~1.4 GB. It gets the opposite (``return_freed_memory``): the mmap
threshold fixed at glibc's initial 128 KiB, so every large block goes back to the kernel at
once and the peak is the live memory. Float results do not depend on where tensors live.

Inference commands leave malloc alone. So does a user who set any glibc malloc tunable
(``GLIBC_TUNABLES``, ``MALLOC_*_``): clipsan changes nothing then. CUDA runs are left alone
(their tensors live in the CUDA caching allocator), and so are C libraries without glibc's
``mallopt``.
"""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)
_GLIBC_FIRST_MMAP_THRESHOLD = 128 * 1024  # where glibc's adaptive threshold starts

_applied: str | None = None  # the one setting this process took ("" if none could be)


def user_set_malloc() -> bool:
    """Whether the environment already tunes glibc's malloc (then it is the user's choice)."""
    # glibc's environment aliases all start with MALLOC_ (MALLOC_MMAP_MAX_, MALLOC_ARENA_MAX, ...).
    return any(name.startswith("MALLOC_") for name in os.environ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Eager training: serve every allocation from the heap and never trim it; True if it took effect."""
    return _set_once("keep", ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM)))


def return_freed_memory() -> bool:
    """Compiled training: hand every block over 128 KiB back on free; True if it took effect."""
    return _set_once("return", ((M_MMAP_THRESHOLD, _GLIBC_FIRST_MMAP_THRESHOLD),))


def _set_once(name: str, settings: tuple[tuple[int, int], ...]) -> bool:
    """The first setting asked for in a process is the one it keeps (call before the first training
    step: it applies to later allocations only, and glibc's adaptive threshold cannot be restored)."""
    global _applied
    if _applied is None:
        _applied = ""
        if not user_set_malloc():
            mallopt = _glibc_mallopt()
            if mallopt is not None and all(mallopt(param, value) for param, value in settings):
                _applied = name
    return _applied == name


def _glibc_mallopt():
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):  # no confstr (Windows), or no such name (musl, macOS)
        libc_version = ""
    if "glibc" not in libc_version:
        return None  # their mallopt (if any) means something else
    libc = ctypes.CDLL("libc.so.6")  # glibc's soname on every Linux it ships on (find_library would run ldconfig)
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt
