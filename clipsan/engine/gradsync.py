"""Summing gradients over processes while backward is still running.

Parameters are split into buckets of about 25 MB, in reverse registration order
(roughly the order backward produces their gradients, as DistributedDataParallel
does). A grad hook notes each gradient as it is accumulated; when a bucket is
complete it is flattened and its all-reduce started asynchronously, so
communication overlaps the rest of backward. Buckets are started strictly in
order, so every rank issues the same sequence of collectives whatever order its
autograd graph runs in. After backward, ``finish`` starts what is left — a
parameter that got no gradient on this rank (a tower unused by its shard)
contributes zeros, so every rank reduces the same parameter list — then waits and
copies the sums back into ``.grad``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

BUCKET_BYTES = 25 * 1024 * 1024


class GradientSync:
    """Bucketed, overlapped all-reduce (sum) of ``params``' gradients; a no-op for one process."""

    def __init__(self, params: list[torch.nn.Parameter], world_size: int, bucket_bytes: int = BUCKET_BYTES):
        self.enabled = world_size > 1
        self.buckets: list[list[torch.nn.Parameter]] = []
        self._pending: list[tuple[torch.Tensor, list[torch.nn.Parameter], object]] = []
        if not self.enabled:
            return
        current, size = [], 0
        for p in reversed(params):
            current.append(p)
            size += p.numel() * p.element_size()
            if size >= bucket_bytes:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        self._bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]
        self._reset()

    def _reset(self) -> None:
        self._ready = [0] * len(self.buckets)
        self._next = 0  # the next bucket to start: buckets start in order on every rank
        self._pending = []

    def _on_grad(self, param: torch.nn.Parameter) -> None:
        i = self._bucket_of[id(param)]
        self._ready[i] += 1
        while self._next < len(self.buckets) and self._ready[self._next] == len(self.buckets[self._next]):
            self._start(self._next)

    def _start(self, i: int) -> None:
        bucket = self.buckets[i]
        for p in bucket:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        self._pending.append((flat, bucket, dist.all_reduce(flat, async_op=True)))
        self._next += 1

    def finish(self) -> None:
        """After backward: start the remaining buckets, wait for all, write the sums into ``.grad``."""
        if not self.enabled:
            return
        while self._next < len(self.buckets):
            self._start(self._next)
        for flat, bucket, work in self._pending:
            work.wait()
            offset = 0
            for p in bucket:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n
        self._reset()

    def close(self) -> None:
        for handle in getattr(self, "_handles", []):
            handle.remove()
