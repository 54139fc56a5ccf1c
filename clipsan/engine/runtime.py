"""Where the computation runs: device, precision, and data parallelism.

This is the one place that knows about CUDA, autocast and torch.distributed.
Everything else asks the Runtime.

Data parallelism: under ``torchrun`` every process holds the whole model and a
shard of each global batch. Contrastive losses need the global batch, so
features are all-gathered with the local shard re-inserted (gradients flow only
through the local part); each process then computes the same global loss, and
gradients are summed across processes, which gives exactly the gradient of the
single-process run on the same global batch. We all-reduce gradients ourselves
instead of wrapping the model in DistributedDataParallel because recipes call
``encode_image``/``encode_text`` directly, and the wrapper only synchronises
through ``forward``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from clipsan.errors import UserError

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class Runtime:
    device: torch.device
    precision: str  # resolved: fp32 | bf16 | fp16
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; a disabled scaler is a transparent no-op.
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def to_device(self, batch: dict) -> dict:
        non_blocking = self.device.type == "cuda"
        return {key: value.to(self.device, non_blocking=non_blocking) if torch.is_tensor(value) else value for key, value in batch.items()}

    # --- collective helpers (identity when not distributed) -------------------

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's rows in rank order; gradients flow through our own rows.

        Shards may differ in length (a corrupt image is dropped from one shard),
        so lengths are exchanged first and rows padded for the collective.
        """
        if not self.distributed:
            return local
        n = torch.tensor([local.shape[0]], device=local.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        sizes = [int(s.item()) for s in sizes]
        padded = local.detach().new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        parts = [part[:size] for part, size in zip(parts, sizes)]
        parts[self.rank] = local
        return torch.cat(parts, dim=0)

    def shared(self, value: torch.Tensor) -> torch.Tensor:
        """A replicated quantity (e.g. the logit scale) entering a loss every process computes in full.

        Each process back-propagates the whole global loss into it, so its
        gradient is split W ways; summing over processes then restores it once.
        """
        if not self.distributed:
            return value
        share = value / self.world_size
        return share + (value - share).detach()

    def sum_scalar(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def sum_gradients(self, parameters) -> None:
        """Sum gradients over processes in a few flat buckets (see module docstring for why sum)."""
        if not self.distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        bucket: list[torch.Tensor] = []
        size = 0
        for g in grads:
            bucket.append(g)
            size += g.numel()
            if size >= 8_000_000:
                _all_reduce_flat(bucket)
                bucket, size = [], 0
        if bucket:
            _all_reduce_flat(bucket)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _all_reduce_flat(tensors: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        return torch.device(spec)
    raise UserError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


def resolve_precision(spec: str, device: torch.device) -> str:
    if spec not in _PRECISIONS:
        raise UserError(f"--precision {spec}: expected one of {', '.join(_PRECISIONS)}")
    if spec == "auto":
        # bf16 autocast pays off on CUDA; on CPU it measured slower than fp32.
        return "bf16" if device.type == "cuda" else "fp32"
    return spec


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Resolve device/precision; join the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return Runtime(dev, resolve_precision(precision, dev), dist.get_rank(), dist.get_world_size())
    dev = resolve_device(device)
    return Runtime(dev, resolve_precision(precision, dev))


def shutdown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()
