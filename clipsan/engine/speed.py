"""Speed switches of a training run: kernels (cudnn autotuning / determinism), compilation,
activation checkpointing, memory format. None changes the parameters or the optimizer's math;
on CPU in fp32 the defaults leave results bitwise equal to a run without this module.
"""

from __future__ import annotations

import os

import torch

from clipsan.config.train import TrainConfig
from clipsan.engine import host_memory
from clipsan.engine.runtime import Runtime

# cuBLAS needs a fixed workspace for reproducible matmuls; read when its first handle is made.
CUBLAS_DETERMINISTIC = ":4096:8"


def configure_kernels(deterministic: bool, rt: Runtime) -> None:
    """Before any CUDA work: reproducible kernels (--deterministic), else let cudnn pick the fastest."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif rt.device.type == "cuda":
        # Fixed input shapes (full batches, one image size): autotuned convolutions pay off from step 2.
        torch.backends.cudnn.benchmark = True


def prepare_model(module: torch.nn.Module, training: TrainConfig, rt: Runtime) -> None:
    """Apply the run's model-side switches; ``module`` is on ``rt.device`` already."""
    # Eager CPU steps free and re-allocate gigabytes of activations: keeping that memory in the
    # process saves their page faults. Compiled steps gain nothing from it and fragment the kept
    # heap, so they hand large blocks back at once (host_memory; BENCHMARKS, "Memory on CPU").
    if rt.device.type == "cpu" and training.compile:
        host_memory.return_freed_memory()
    elif rt.device.type == "cpu":
        host_memory.keep_freed_memory()
    if training.grad_checkpointing and hasattr(module, "set_grad_checkpointing"):
        module.set_grad_checkpointing(True)
    # NHWC convolutions: cudnn's fast path on CUDA; on CPU only with --compile (eager CPU fp32 must
    # stay bitwise equal to NCHW's results, and the compiled graph is where it was measured to help).
    if hasattr(module, "use_channels_last") and (rt.device.type == "cuda" or training.compile):
        module.use_channels_last()
    if training.compile and hasattr(module, "compile_encoders"):
        module.compile_encoders()
