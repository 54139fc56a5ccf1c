"""Where the computation runs: device, precision, and data parallelism.

This is the one place that knows about CUDA, autocast and torch.distributed.
Everything else asks the Runtime.

Precision: the CLIP encoders run under autocast (``Runtime.encode``, the one
autocast boundary) and hand back fp32 features; everything downstream of them
(similarity matrices, losses, the GAN and topology terms, anything compared
with a threshold) runs in fp32 outside autocast. Inside autocast a ``.float()``
does not help: a matmul of two fp32 tensors is still computed in bf16/fp16.
On CUDA, fp32 work may use TF32 tensor cores.

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
import datetime
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from clipsan.config.runtime import DEVICE_CHOICES, DEVICE_PATTERN, PRECISIONS
from clipsan.errors import ClipsanError, UserError

_DEVICE_SPEC = re.compile(DEVICE_PATTERN)
# How long a process waits in a collective for the others. Rank 0 works alone while the
# others wait in a barrier: writing a checkpoint (ViT-L: 1.7 GB of weights + 3.4 GB of AdamW
# state, fsynced: ~2 min at 50 MB/s, ~4 min on a 20 MB/s network disk) and optimizing
# BadCLIP's patch. NCCL's 10-minute default is too close; 30 minutes is gloo's default.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)


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
        return autocast_context(self.device, self.precision)

    def encode(self, encoder: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """The autocast boundary: ``encoder`` (a CLIP tower) runs in this run's precision and its
        features come back fp32, so the loss code that follows runs in fp32 outside autocast."""
        with self.autocast():
            return encoder(inputs).float()

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; a disabled scaler is a transparent no-op.
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

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

    def gather_host_rows(self, local_rows: torch.Tensor, shard_rows: int) -> torch.Tensor:
        """Row positions (a host int tensor) in this shard -> the same rows' positions in the global batch.

        Exchanged over the host group, so a recipe can choose rows without reading the device.
        """
        if not self.distributed:
            return local_rows
        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, (shard_rows, local_rows.tolist()), group=self._host_group())
        offsets, positions = 0, []
        for rows, chosen in everyone:
            positions += [offsets + r for r in chosen]
            offsets += rows
        return torch.tensor(positions, dtype=torch.long)

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

    def agree(self, action: Callable, *args, **kwargs):
        """Run ``action`` on every process, then share the outcome: if it raised a UserError
        anywhere, every process raises the same one (the lowest failing rank's message).

        For input checks that some ranks make alone (rank 0 locks the run dir and optimizes
        BadCLIP's patch) or that must end every rank the same way (data, model, resume):
        without it rank 0 exits 2 while the others wait in their next collective until the
        timeout. Shared errors are flagged so that only rank 0 prints them (clipsan.cli.app).
        """
        if not self.distributed:
            return action(*args, **kwargs)
        result, failure = None, None
        try:
            result = action(*args, **kwargs)
        except UserError as exc:
            failure = ("input", str(exc))
        except Exception as exc:  # a bug: its traceback stays on this rank, the others stop too
            self._failures(("bug", f"process {self.rank} failed ({type(exc).__name__}); see its traceback"))
            raise
        failures = self._failures(failure)
        if failures:
            kind, message = failures[0]
            raise shared_error(message, UserError if kind == "input" else ClipsanError)
        return result

    def _failures(self, failure: tuple[str, str] | None) -> list[tuple[str, str]]:
        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, failure)
        return [f for f in everyone if f is not None]

    def sync_batchnorm(self, module: nn.Module, batchnorm: str) -> nn.Module:
        """``--batchnorm train`` across CUDA processes normalises with the global batch's statistics
        (SyncBatchNorm, layers replaced in place). SyncBatchNorm needs CUDA, so on CPU (gloo)
        each process keeps its own shard's statistics, as documented."""
        if batchnorm != "train" or not self.distributed or self.device.type != "cuda":
            return module
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def _all_reduce_flat(tensors: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def shared_error(message: str, kind: type[ClipsanError] = UserError) -> ClipsanError:
    """An error every process of the job raises alike: the command line prints it on rank 0 only."""
    error = kind(message)
    error.shared = True
    return error


def autocast_context(device: torch.device, precision: str):
    """The autocast context for a resolved precision (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_device(spec: str) -> torch.device:
    """``auto | cpu | cuda | cuda:N`` as a device, checked against the CUDA devices present."""
    match = _DEVICE_SPEC.fullmatch(spec)
    if match is None:
        raise UserError(f"--device {spec}: expected {DEVICE_CHOICES}")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"--device {spec}: this machine has {count} CUDA device{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def _torchrun_device(spec: str, local_rank: int) -> torch.device:
    """Under torchrun every process of a node takes the GPU of its local rank."""
    dev = resolve_device(spec)  # a malformed, absent or missing device: the single-process message
    if dev.type == "cpu":
        return dev
    if spec not in ("auto", "cuda"):
        raise UserError(f"--device {spec}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda (or auto)")
    count = torch.cuda.device_count()
    if local_rank >= count:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", "?")
        raise UserError(f"torchrun started {per_node} processes on a machine with {count} CUDA device{'s' if count != 1 else ''}; use --nproc_per_node {count}")
    return torch.device("cuda", local_rank)


def use_device(dev: torch.device) -> torch.device:
    """Make ``dev`` the current device. On CUDA, fp32 matmuls and convolutions may use TF32
    tensor cores (Ampere and later: several times fp32's throughput, 10-bit mantissa, which
    training and scan's statistics tolerate; cuDNN convolutions already default to it)."""
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    return dev


def resolve_precision(spec: str, device: torch.device) -> str:
    if spec not in PRECISIONS:
        raise UserError(f"--precision {spec}: expected one of {', '.join(PRECISIONS)}")
    if spec != "auto":
        return spec
    if device.type != "cuda":
        return "fp32"  # CPU autocast measured slower than fp32
    # bf16 needs no loss scaling, but only pays where the GPU has bf16 units (Ampere and later);
    # elsewhere fp16 with a GradScaler (Runtime.grad_scaler). Asks the current device (use_device).
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Resolve and select device/precision; join the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        dev = use_device(_torchrun_device(device, int(os.environ.get("LOCAL_RANK", "0"))))
        prec = resolve_precision(precision, dev)
        if not dist.is_initialized():
            if dev.type == "cuda":  # device_id: NCCL binds its communicator to our GPU up front
                dist.init_process_group("nccl", device_id=dev, timeout=PROCESS_GROUP_TIMEOUT)
            else:
                dist.init_process_group("gloo", timeout=PROCESS_GROUP_TIMEOUT)
        return Runtime(dev, prec, dist.get_rank(), dist.get_world_size())
    return local_runtime(device, precision)


def local_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """This process alone (inference commands never join a process group, even under torchrun)."""
    dev = use_device(resolve_device(device))
    return Runtime(dev, resolve_precision(precision, dev))


def shutdown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()
