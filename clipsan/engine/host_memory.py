"""CPU runs: keep the memory a step frees for the next step instead of handing it back to the kernel.

A CPU training step allocates and frees gigabytes of activations (RN50 at batch 32: about
7 GB). glibc serves every block over its mmap threshold (at most 32 MB, which most of
those activations exceed) with a fresh ``mmap`` and unmaps it on ``free``, so each step
page-faults its whole working set again and the kernel zeroes it: about 3 million minor
faults and 3-5 s of system time per RN50 cleanclip step on this project's machine
(BENCHMARKS.md, "Memory on CPU"). With mmap off and trimming off, glibc reuses its
heap and a step after the first faults almost nothing. The price is that the process keeps
its peak resident between steps, and the heap's fragmentation can add to the peak
(measured there). Float results do not depend on where tensors live.

A user who set any glibc malloc tunable (``GLIBC_TUNABLES``, ``MALLOC_*_``) keeps exactly
what they set: clipsan changes nothing then. CUDA runs are left alone (their tensors live in
the CUDA caching allocator), and so are C libraries without glibc's ``mallopt``.
"""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)

_applied: bool | None = None  # once per process: None = not tried yet


def user_set_malloc() -> bool:
    """Whether the environment already tunes glibc's malloc (then it is the user's choice)."""
    # glibc's environment aliases all start with MALLOC_ (MALLOC_MMAP_MAX_, MALLOC_ARENA_MAX, ...).
    return any(name.startswith("MALLOC_") for name in os.environ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory() -> bool:
    """Ask glibc to serve every allocation from its heap and never trim it; True if it took effect.

    Idempotent; call before a CPU run's first large allocation.
    """
    global _applied
    if _applied is None:
        _applied = False
        if not user_set_malloc():
            mallopt = _glibc_mallopt()
            if mallopt is not None:
                _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM))
    return _applied


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
