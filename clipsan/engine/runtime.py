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
through ``forward``; the loop overlaps that all-reduce with backward
(``clipsan.engine.gradsync``). Host numbers (shard sizes, counts, stop flags) go
over a CPU (gloo) group, so exchanging them never waits for the device.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

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
    _step_rows: list[int] | None = field(default=None, init=False, repr=False)  # every shard's rows this step
    _host_pg: object = field(default=None, init=False, repr=False)

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

    def begin_step(self, local_rows: int) -> None:
        """Learn every shard's row count for this step, once (gathers reuse it).

        Shards differ only when a corrupt image was dropped from one. The counts are
        host integers exchanged over a CPU (gloo) group, so learning them never
        waits for the device.
        """
        if self.distributed:
            self._step_rows = self._host_all_gather(local_rows)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's rows in rank order; gradients flow through our own rows.

        ``local`` has one row per sample of this step's shard (see ``begin_step``);
        rows of another count go through ``gather_varying``.
        """
        if not self.distributed:
            return local
        sizes = self._step_rows
        if sizes is None:  # outside the training loop: learn them now
            return self.gather_varying(local)
        if sizes[self.rank] != local.shape[0]:
            raise RuntimeError(f"gather of {local.shape[0]} rows in a step of {sizes[self.rank]}; use gather_varying")
        return self._gather_rows(local, sizes)

    def gather_varying(self, local: torch.Tensor) -> torch.Tensor:
        """``gather`` for rows whose count differs between processes (exchanged first)."""
        if not self.distributed:
            return local
        return self._gather_rows(local, self._host_all_gather(local.shape[0]))

    def _gather_rows(self, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        padded = local.detach()
        if local.shape[0] < max(sizes):  # all_gather needs equal shapes
            padded = local.detach().new_zeros((max(sizes), *local.shape[1:]))
            padded[: local.shape[0]] = local.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        parts = [part[:size] for part, size in zip(parts, sizes)]
        parts[self.rank] = local
        return torch.cat(parts, dim=0)

    def _host_group(self):
        """A gloo group for host values (the default group when it is gloo already)."""
        if self._host_pg is None:
            self._host_pg = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return self._host_pg

    def _host_all_gather(self, value: int) -> list[int]:
        mine = torch.tensor([value], dtype=torch.int64)
        everyone = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(everyone, mine, group=self._host_group())
        return [int(v.numpy()[0]) for v in everyone]  # host memory: no device read

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
        """Sum a host number over processes (over the host group: never waits for the device)."""
        return self.sum_host([value])[0] if self.distributed else value

    def sum_host(self, values: list[float]) -> list[float]:
        """Sum host numbers over processes, element-wise, in one host collective."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self._host_group())
        return [float(v) for v in t.numpy()]

    def sum_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a small device tensor over processes in place (one collective, no host read)."""
        if self.distributed:
            dist.all_reduce(value)
        return value

    def sum_gradients(self, parameters) -> None:
        """Sum gradients over processes after backward, in a few flat buckets (see module docstring for why sum).

        Every process reduces the same list: a parameter without a gradient here contributes zeros.
        The training loop overlaps this with backward instead (``clipsan.engine.gradsync``).
        """
        if not self.distributed:
            return
        bucket: list[torch.Tensor] = []
        size = 0
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            bucket.append(p.grad)
            size += p.grad.numel()
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
