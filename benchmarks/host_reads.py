"""Run ``clipsan ARGS`` counting host reads of tensors made by the training loop.

    python benchmarks/host_reads.py [--scope train|all] COUNTS clipsan-args...

writes COUNTS.RANK (JSON: reads by method, their total, the command's seconds in-process, and on CUDA the device syncs that
torch.cuda's sync debug mode reports plus the peak GPU memory). Under torchrun every rank
writes its own file. ``--scope all`` counts the whole command (scan, eval) instead.

Counts calls of Tensor.item / __float__ / __int__ / __bool__ / cpu / tolist made while
``clipsan.engine.loop.train`` runs, except those writing a checkpoint (which must copy the
weights to the host) and torch.optim's reads of its own step counters (host tensors by
PyTorch's design; fused AdamW on CUDA keeps them on the device). Data workers are separate
processes, so run with --workers >= 1 to keep the data pipeline's own tensor reads
(augmentations) out of the count. Under torchrun the shard-size exchange reads host (gloo)
tensors with numpy, which is not a device read and is not counted.
Set HOST_READS_WHERE=1 to print where each counted read came from.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

READS = ("item", "__float__", "__int__", "__bool__", "cpu", "tolist")
counts = {name: 0 for name in READS}
state = {"in_train": False}


def _excluded() -> bool:
    frame = sys._getframe(2)
    if f"torch{os.sep}optim{os.sep}" in frame.f_code.co_filename:
        return True
    while frame is not None:
        if frame.f_code.co_name in ("save_checkpoint", "save"):
            return True
        frame = frame.f_back
    return False


def _counted(name: str):
    original = getattr(torch.Tensor, name)

    def wrapper(self, *args, **kwargs):
        if state["in_train"] and not _excluded():
            counts[name] += 1
            if os.environ.get("HOST_READS_WHERE"):
                caller = sys._getframe(1)
                print(f"host_reads: {name} at {caller.f_code.co_filename}:{caller.f_lineno}", file=sys.stderr)
        return original(self, *args, **kwargs)

    return wrapper


def _count_cuda_syncs() -> list:
    """On CUDA, every synchronising call warns in sync debug mode: those warnings are the device syncs."""
    import warnings

    if not torch.cuda.is_available():
        return []
    torch.cuda.set_sync_debug_mode("warn")
    caught = warnings.catch_warnings(record=True)
    log = caught.__enter__()
    warnings.simplefilter("always")
    return log


def main() -> int:
    args = sys.argv[1:]
    scope = "train"
    if args[:1] == ["--scope"]:
        scope, args = args[1], args[2:]
    out, argv = args[0], args[1:]
    for name in READS:
        setattr(torch.Tensor, name, _counted(name))
    state["in_train"] = scope == "all"
    cuda_warnings = _count_cuda_syncs()

    import clipsan.engine.loop as loop
    import clipsan.jobs.training as training_job

    real_train = loop.train

    def train(*args, **kwargs):
        state["in_train"] = True
        try:
            return real_train(*args, **kwargs)
        finally:
            state["in_train"] = scope == "all"

    import clipsan.recipes.abd.crafting as crafting

    training_job.train = crafting.train = train  # the modules that run the engine's loop
    from clipsan.cli import main as cli_main

    started = time.perf_counter()
    code = cli_main(argv)
    seconds = time.perf_counter() - started
    rank = os.environ.get("RANK", "0")
    record = {**counts, "total": sum(counts.values()), "seconds": seconds}
    if torch.cuda.is_available():
        record["cuda_syncs"] = sum("synchroniz" in str(w.message) for w in cuda_warnings)
        record["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    with open(f"{out}.{rank}", "w") as fh:
        json.dump(record, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())
