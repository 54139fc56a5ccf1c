"""Where a command runs: the device and precision choices every command takes, and data workers."""

from __future__ import annotations

import os
from typing import Any

from clipsan.config.checks import checked

DEVICE_PATTERN = r"auto|cpu|cuda(?::(\d+))?"
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N")  # what DEVICE_PATTERN matches, in words
DEVICE_CHOICES = ", ".join(DEVICE_FORMS[:-1]) + f" or {DEVICE_FORMS[-1]}"
# auto: bf16 autocast on GPUs with native bf16, else fp16; fp32 on CPU (clipsan.engine.runtime.resolve_precision).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_DEFAULT_WORKERS = 8


def device_field(default: str = "auto") -> Any:
    return checked(default, flag="--device", pattern=DEVICE_PATTERN, what=DEVICE_CHOICES)


def precision_field() -> Any:
    return checked("auto", flag="--precision", choices=PRECISIONS)


def workers_field() -> Any:
    """Data-loading processes; None: ``default_workers()``."""
    return checked(None, flag="--workers", what="a count", low=0, optional=True)


def default_workers() -> int:
    """Data workers per process when --workers is not given: the CPUs this process may use,
    shared among the processes torchrun starts on this machine (LOCAL_WORLD_SIZE), less one
    for the training process itself; at least 1, at most MAX_DEFAULT_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_DEFAULT_WORKERS, per_rank - 1))


def resolve_workers(workers: int | None) -> int:
    return default_workers() if workers is None else workers
