"""SigLIP's sigmoid loss: equal to open_clip's SigLipLoss (values and gradients) in one process and,
over the global batch, under a 2-process gloo run through clipsan's runtime (the all-gather every
contrastive recipe uses); no more memory kept for backward than the softmax loss keeps.

Run as a script under torchrun, this file is that 2-process run's worker.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipsan.openclip import open_clip
from clipsan.recipes.losses import contrastive_loss, sigmoid_loss

TOL = 1e-6
# (log t, bias): open_clip's SigLIP init, a trained-like pair, zero, and a large positive bias.
CALIBRATIONS = ((math.log(10.0), -10.0), (math.log(117.0), -12.7), (0.0, 0.0), (math.log(100.0), 5.0))
N, D = 24, 16


def features(dtype=torch.float64, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, D, generator=g, dtype=dtype), dim=-1)
    texts = F.normalize(images + 0.7 * torch.randn(n, D, generator=g, dtype=dtype), dim=-1)  # matches lean together
    return images, texts


def value_and_grads(loss_fn, images, texts, log_scale: float, bias: float):
    """The loss and its gradients w.r.t. images, texts, log t and the bias."""
    leaves = [images.clone().requires_grad_(), texts.clone().requires_grad_()]
    leaves += [torch.tensor(log_scale, dtype=images.dtype, requires_grad=True), torch.tensor(bias, dtype=images.dtype, requires_grad=True)]
    loss = loss_fn(leaves[0], leaves[1], leaves[2].exp(), leaves[3])
    loss.backward()
    return [loss.detach(), *(leaf.grad for leaf in leaves)]


def open_clip_loss(images, texts, scale, bias):
    return open_clip.loss.SigLipLoss()(images, texts, scale, bias)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sigmoid_loss_equals_open_clips_values_and_gradients(dtype):
    images, texts = features(dtype)
    for log_scale, bias in CALIBRATIONS:
        ours, theirs = value_and_grads(sigmoid_loss, images, texts, log_scale, bias), value_and_grads(open_clip_loss, images, texts, log_scale, bias)
        for name, a, b in zip(("loss", "images", "texts", "log_scale", "bias"), ours, theirs):
            # float32 rounds the two orders of operations differently: compared relative to the value's size.
            bound = TOL if dtype == torch.float64 else TOL * max(1.0, b.abs().max().item())
            assert (a - b).abs().max().item() < bound, (name, log_scale, bias)


def test_the_sigmoid_loss_keeps_less_for_backward_than_the_softmax_loss():
    images, texts = features(torch.float32, n=256)

    def saved_bytes(loss_fn) -> int:
        total = 0

        def pack(tensor):
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        a, b = images.clone().requires_grad_(), texts.clone().requires_grad_()
        scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn(a, b, scale, bias).backward()
        return total

    sigmoid, softmax = saved_bytes(sigmoid_loss), saved_bytes(lambda a, b, scale, bias: contrastive_loss(a, b, scale))
    square = 256 * 256 * 4
    assert sigmoid <= softmax and sigmoid < 1.5 * square, (sigmoid, softmax)  # one N x N matrix kept; softmax keeps about four


def test_two_processes_compute_the_global_batchs_loss(tmp_path):
    """Each rank holds half the batch; through clipsan's all-gather each computes the whole batch's
    loss, gradients reach its own rows, and summed parameter gradients are the one-process ones."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    images, texts = features()
    log_scale, bias = CALIBRATIONS[1]
    loss, image_grads, text_grads, scale_grad, bias_grad = value_and_grads(open_clip_loss, images, texts, log_scale, bias)
    half = N // 2
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        rows = slice(rank * half, (rank + 1) * half)
        assert abs(got["loss"] - loss.item()) < TOL
        assert (got["images"] - image_grads[rows]).abs().max() < TOL and (got["texts"] - text_grads[rows]).abs().max() < TOL
        assert abs(got["log_scale"] - scale_grad.item()) < TOL and abs(got["bias"] - bias_grad.item()) < TOL
        # open_clip's own sharded form (neighbour exchange; each rank's loss over its images, averaged
        # by DDP) adds up to the same global-batch loss.
        assert abs(got["open_clip_mean"] - loss.item()) < TOL


def _worker(out: Path) -> None:
    from clipsan.engine.runtime import setup_runtime, shutdown_runtime

    rt = setup_runtime("cpu", "fp32")
    images, texts = features()
    log_scale, bias = CALIBRATIONS[1]
    rows = slice(rt.rank * (N // 2), (rt.rank + 1) * (N // 2))
    local = [images[rows].clone().requires_grad_(), texts[rows].clone().requires_grad_()]
    params = [torch.tensor(log_scale, dtype=torch.float64, requires_grad=True), torch.tensor(bias, dtype=torch.float64, requires_grad=True)]
    rt.begin_step(N // 2)
    loss = sigmoid_loss(rt.gather(local[0]), rt.gather(local[1]), rt.shared(params[0].exp()), rt.shared(params[1]))
    loss.backward()
    rt.sum_gradients(params)  # what the training loop does after backward
    sharded = open_clip.loss.SigLipLoss(rank=rt.rank, world_size=rt.world_size)(images[rows], texts[rows], math.exp(log_scale), bias)
    mean = torch.tensor([sharded.item()], dtype=torch.float64)
    torch.distributed.all_reduce(mean)
    result = {"loss": loss.item(), "images": local[0].grad, "texts": local[1].grad, "log_scale": params[0].grad.item(), "bias": params[1].grad.item()}
    torch.save({**result, "open_clip_mean": mean.item() / rt.world_size}, out / f"rank{rt.rank}.pt")
    shutdown_runtime(rt)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
