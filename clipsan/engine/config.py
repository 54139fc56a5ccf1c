"""How the engine trains: plain data, no torch (the command line reads these defaults)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BATCHNORM_MODES = ("frozen", "train")
SCHEDULES = ("cosine", "constant")


def default_workers() -> int:
    """Data workers per process when --workers is not given: the CPUs this process may use,
    shared among the processes torchrun starts on this machine (LOCAL_WORLD_SIZE), less one
    for the training process itself; at least 1, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, per_rank - 1))


def resolve_workers(workers: int | None) -> int:
    return default_workers() if workers is None else workers


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # global batch, split evenly across processes
    lr: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 0.1  # AdamW; none on norms, biases and logit_scale
    # The papers' fine-tuning betas/eps; CLIP's pre-training uses (0.9, 0.98) and 1e-6.
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None
    seed: int = 0
    workers: int | None = None  # None: default_workers()
    save_every: int = 500
    log_every: int = 10
    max_steps: int | None = None  # stop early (the lab's time budgets)
    batchnorm: str = "frozen"  # frozen: BN layers use their running statistics (README, "BatchNorm")
    schedule: str = "cosine"  # after warmup: cosine decay to 0, or "constant" (GAN training)
    progress: bool = False
    # Speed switches: none changes what is computed (on CPU, fp32 results stay bitwise equal).
    compile: bool = False  # torch.compile the two encoders
    grad_checkpointing: bool = False  # recompute transformer activations in backward (open_clip)
    deterministic: bool = False  # bitwise-reproducible CUDA kernels (slower); off: cudnn.benchmark

    def __post_init__(self) -> None:
        from clipsan.errors import UserError

        if not (0 <= self.betas[0] < 1 and 0 <= self.betas[1] < 1) or self.eps <= 0:
            raise UserError("--beta1/--beta2 must lie in [0, 1) and --eps must be positive")
        if self.batchnorm not in BATCHNORM_MODES:
            raise UserError(f"--batchnorm {self.batchnorm}: expected one of {', '.join(BATCHNORM_MODES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: expected one of {SCHEDULES}")

    # Options that change the result: a resumed run must use the same ones.
    def fingerprint(self) -> dict:
        keep = ("epochs", "batch_size", "lr", "warmup_steps", "weight_decay", "betas", "eps", "grad_clip", "seed", "max_steps", "batchnorm", "schedule")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keep}


@dataclass(frozen=True)
class PaperSchedule:
    """A recipe's training length and rate as its paper gives them; the rest is TrainConfig's defaults."""

    epochs: int
    batch_size: int
    lr: float
    warmup_steps: int

    def train_config(self, **overrides) -> TrainConfig:
        """A TrainConfig with this schedule, where an override of None keeps the paper's value."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(TrainConfig(**asdict(self)), **given)
