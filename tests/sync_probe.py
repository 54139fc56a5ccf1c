"""Run ``clipsan ARGS`` counting host reads of tensors made by the training loop.

    python tests/sync_probe.py COUNTS.json clipsan-args...     (or under torchrun: one file per rank)

Counts calls of Tensor.item / __float__ / __int__ / __bool__ / cpu / tolist made while
``clipsan.engine.loop.train`` runs, except those writing a checkpoint (which must copy the
weights to the host) and torch.optim's reads of its own step counters (host tensors by
PyTorch's design; fused AdamW on CUDA keeps them on the device). Data workers are separate
processes, so run with --workers >= 1 to keep the data pipeline's own tensor reads
(augmentations) out of the count. Under torchrun the shard-size exchange reads host (gloo)
tensors with numpy, which is not a device read and is not counted.
Set SYNC_PROBE_WHERE=1 to print where each counted read came from.
"""

from __future__ import annotations

import json
import os
import sys

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
            if os.environ.get("SYNC_PROBE_WHERE"):
                caller = sys._getframe(1)
                print(f"sync_probe: {name} at {caller.f_code.co_filename}:{caller.f_lineno}", file=sys.stderr)
        return original(self, *args, **kwargs)

    return wrapper


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    for name in READS:
        setattr(torch.Tensor, name, _counted(name))

    import clipsan.engine.loop as loop
    import clipsan.finetune as finetune

    real_train = loop.train

    def train(*args, **kwargs):
        state["in_train"] = True
        try:
            return real_train(*args, **kwargs)
        finally:
            state["in_train"] = False

    finetune.train = train
    from clipsan.cli import main as cli_main

    code = cli_main(argv)
    rank = os.environ.get("RANK", "0")
    with open(f"{out}.{rank}", "w") as fh:
        json.dump(counts, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())
