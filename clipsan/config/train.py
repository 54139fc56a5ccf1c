"""How the engine trains (plain data, no torch): optimizer, schedule, checkpoints, speed switches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from clipsan.config.checks import Checked, checked, choice, count, fraction
from clipsan.config.runtime import workers_field

BATCHNORM_MODES = ("frozen", "train")  # frozen: BN layers use their running statistics (README, "BatchNorm")
SCHEDULES = ("cosine", "constant")  # after warmup: cosine decay to 0, or constant (GAN training)


def learning_rate_field(default: float | None, flag: str = "--lr") -> object:
    return checked(default, flag=flag, what="a learning rate", low=0.0, optional=default is None)


@dataclass(frozen=True)
class TrainConfig(Checked):
    epochs: int = count(10, "--epochs")
    batch_size: int = count(64, "--batch-size")  # global batch, split evenly across processes
    lr: float = learning_rate_field(1e-5)
    warmup_steps: int = count(50, "--warmup", low=0)
    weight_decay: float = checked(0.1, flag="--weight-decay", what="a weight decay", low=0.0)  # AdamW; none on norms, biases and logit_scale
    # The papers' fine-tuning betas/eps; CLIP's pre-training uses (0.9, 0.98) and 1e-6.
    betas: tuple[float, float] = checked((0.9, 0.999), flag="--beta1/--beta2", what="each beta", low=0.0, high=1.0, high_open=True)
    eps: float = checked(1e-8, flag="--eps", what="an epsilon", low=0.0, low_open=True)
    grad_clip: float | None = checked(None, flag="--grad-clip", what="a gradient norm", low=0.0, optional=True)  # None or 0: off
    seed: int = 0
    workers: int | None = workers_field()
    save_every: int = count(500, "--save-every")
    log_every: int = count(10, "--log-every")
    max_steps: int | None = count(None, "--max-steps")  # stop early (the lab's time budgets)
    # The schedule's shape: warmup from warmup_start_lr up (or down) to lr, then cosine to final_lr.
    # warmup_fraction, where set, is the warmup's share of the run's steps (PAR's half) instead of warmup_steps.
    warmup_fraction: float | None = fraction(None, "warmup_fraction")
    warmup_start_lr: float = learning_rate_field(0.0, "warmup_start_lr")
    final_lr: float = learning_rate_field(0.0, "final_lr")
    batchnorm: str = choice("frozen", "--batchnorm", BATCHNORM_MODES)
    schedule: str = choice("cosine", "schedule", SCHEDULES)
    progress: bool = False
    # Speed switches: none changes what is computed (on CPU, fp32 results stay bitwise equal).
    compile: bool = False  # torch.compile the two encoders
    grad_checkpointing: bool = False  # recompute transformer activations in backward (open_clip)
    deterministic: bool = False  # bitwise-reproducible CUDA kernels (slower); off: cudnn.benchmark

    # Options that change the result: a resumed run must use the same ones. The schedule's shape is
    # recorded where it is not the default, so runs recorded before it existed still resume.
    def fingerprint(self) -> dict:
        keep = ("epochs", "batch_size", "lr", "warmup_steps", "weight_decay", "betas", "eps", "grad_clip", "seed", "max_steps", "batchnorm", "schedule")
        shape = {k: v for k, v in asdict(self).items() if k in _SCHEDULE_SHAPE and v != getattr(TrainConfig, k)}
        return {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keep}, **shape}

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps of a run of ``total_steps``."""
        return self.warmup_steps if self.warmup_fraction is None else int(self.warmup_fraction * total_steps)


_SCHEDULE_SHAPE = ("warmup_fraction", "warmup_start_lr", "final_lr")


@dataclass(frozen=True)
class PaperSchedule:
    """A recipe's training as its paper (or public code) gives it; what it leaves unsaid is TrainConfig's default."""

    epochs: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    warmup_fraction: float | None = None
    warmup_start_lr: float = 0.0
    final_lr: float = 0.0

    def train_config(self, **overrides) -> TrainConfig:
        """A TrainConfig with this schedule, where an override of None keeps the paper's value (an explicit
        warmup_steps replaces a warmup given as a fraction)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "warmup_steps" in given:
            given["warmup_fraction"] = None
        paper = {k: v for k, v in asdict(self).items() if v is not None}
        return replace(TrainConfig(**paper), **given)

    def describe(self) -> str:
        warmup = f"{self.warmup_steps} warmup steps" if self.warmup_fraction is None else f"warmup over {self.warmup_fraction:.0%} of the steps"
        if self.warmup_start_lr:
            warmup += f" from lr {self.warmup_start_lr:g}"
        text = f"{self.epochs} epochs, batch {self.batch_size}, lr {self.lr:g}, {warmup}"
        if self.final_lr:
            text += f", cosine to {self.final_lr:g}"
        if self.weight_decay is not None:
            text += f", weight decay {self.weight_decay:g}"
        if self.betas is not None:
            text += f", betas {self.betas[0]:g}/{self.betas[1]:g}"
        return text
