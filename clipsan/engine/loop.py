"""The one training loop every recipe runs on.

    for each batch:   read batch -> recipe.loss_terms -> backward -> sum grads over processes ->
                      clip -> AdamW step -> recipe.after_step           (``Trainer.step``)
                      log, checkpoint, honour signals                      (``Bookkeeper.after_step``)

The step never reads a device value; the bookkeeper reads them only at log steps, before every
checkpoint, at the end, and when a signal came (``clipsan.engine.health``). A job may measure the
model at every epoch end and every N steps (``train(measuring=Measuring(...))``): the bookkeeper does
it outside the step, logs it on that step's line and writes a checkpoint right after, which keeps
every measurement so far; a measurement may end training there (``Measuring.stop``), and the
checkpoint records that too, so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from clipsan.config import TrainConfig
from clipsan.engine import optim, speed
from clipsan.engine.gradsync import GradientSync
from clipsan.engine.health import StepHealth
from clipsan.engine.loader import EpochBatchSampler, RecipeSamples, build_loader, steps_per_epoch, to_device
from clipsan.engine.rundir import RunDir
from clipsan.engine.runtime import Runtime
from clipsan.errors import Interrupted, UserError


@dataclass
class TrainResult:
    steps: int
    epochs_completed: float
    seconds: float
    skipped: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)
    resumed_from: int | None = None
    measured: list[dict] = field(default_factory=list)  # every measurement, {"step", "epoch", **fields}; a resumed run's earlier ones too
    stopped: bool = False  # a measurement ended training (``Measuring.stop``) before its last step


class _StopFlag:
    """SIGINT/SIGTERM only set a flag: the current step finishes, then we checkpoint and exit 3."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. called from a library thread)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second signal: the user insists
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


@dataclass(frozen=True)
class Measuring:
    """What a job measures while it trains: at every epoch end, and every ``every`` steps too if given.

    ``measure``: the module (in eval mode) -> fields for that step's metrics.jsonl line (always logged).
    ``stop``: those fields -> whether training ends at that step (the rest of the schedule is not run).
    A checkpoint is written after every measurement and keeps them all (``TrainResult.measured``)."""

    measure: Callable[[nn.Module], dict]
    every: int | None = None
    stop: Callable[[dict], bool] | None = None

    def due(self, step: int, per_epoch: int) -> bool:
        return step % per_epoch == 0 or (self.every is not None and step % self.every == 0)


def _set_train_mode(module: nn.Module, batchnorm: str) -> None:
    module.train()
    if batchnorm == "frozen":
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()


def _rng_state(rt: Runtime) -> dict:
    state = {"torch": torch.get_rng_state()}
    if rt.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(rt.device)
    return state


def _restore_rng(state: dict, rt: Runtime) -> None:
    # RNG states are CPU byte tensors, even when the checkpoint was loaded onto the GPU.
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and rt.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), rt.device)


def _resume_state(run: RunDir, latest, training: TrainConfig, stage: str, device: torch.device) -> tuple[dict, dict]:
    """The newest checkpoint's weights and state, on ``device``, if it belongs to this run's stage and options."""
    tensors, state = run.load_checkpoint(latest, device)
    if state.get("stage", "train") != stage:
        raise UserError(f"{latest}: checkpoint belongs to stage {state.get('stage')!r}, not {stage!r}")
    if state["fingerprint"] != training.fingerprint():
        changed = sorted(k for k in training.fingerprint() if state["fingerprint"].get(k) != training.fingerprint()[k])
        raise UserError(f"{run.path}: --resume with different options ({', '.join(changed)}); use the original ones")
    return tensors, state


@dataclass(frozen=True)
class StepPlan:
    """How many steps a run takes: the global batch (a multiple of the processes), per epoch, in all."""

    global_batch: int
    per_epoch: int
    total: int

    @classmethod
    def of(cls, n: int, training: TrainConfig, rt: Runtime) -> StepPlan:
        global_batch = min(training.batch_size, n) // rt.world_size * rt.world_size
        if global_batch < 1:
            raise UserError(f"batch size {training.batch_size} is smaller than the {rt.world_size} processes")
        per_epoch = steps_per_epoch(n, global_batch)
        total = per_epoch * training.epochs
        return cls(global_batch, per_epoch, total if training.max_steps is None else min(total, training.max_steps))

    def epoch(self, step: int) -> float:
        return round(step / self.per_epoch, 4)


class Trainer:
    """The module, its optimizer and loss scaler: one optimization step at a time, no host reads."""

    def __init__(self, module: nn.Module, training: TrainConfig, rt: Runtime):
        self.module, self.training, self.rt = module, training, rt
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = optim.build_optimizer(module, training.lr, training.weight_decay, training.betas, training.eps)
        self.scaler = rt.grad_scaler()
        self.grad_sync = GradientSync(self.params, rt.world_size)

    def step(self, recipe, batch: dict, lr: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        optim.set_lr(self.optimizer, lr)
        terms = recipe.loss_terms(self.module, batch, self.rt)  # not under autocast: recipes encode through rt.encode
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)  # whatever a recipe's own backward left (freed after each step below)
        self.scaler.scale(loss).backward()
        self.grad_sync.finish()
        self.scaler.unscale_(self.optimizer)
        if self.training.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.training.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # Free the gradients now: they would otherwise sit beside the next step's activations
        # (and beside a checkpoint being written).
        self.optimizer.zero_grad(set_to_none=True)
        recipe.after_step(self.module)
        return loss, terms

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state(self, tensors: dict, state: dict) -> None:
        self.module.load_state_dict(tensors)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


class Bookkeeper:
    """After each step: watch the loss; at log steps, checkpoints and signals read the device, log to
    metrics.jsonl, checkpoint, and stop (exit 3) or fail (a non-finite loss) as due."""

    def __init__(
        self,
        trainer: Trainer,
        recipe,
        plan: StepPlan,
        run: RunDir,
        stage: str,
        metadata: dict[str, str],
        skipped: dict,
        measuring: Measuring | None = None,
        measured: list[dict] | None = None,
    ):
        self.trainer, self.recipe, self.plan, self.run, self.stage, self.metadata = trainer, recipe, plan, run, stage, metadata
        self.training, self.rt = trainer.training, trainer.rt
        self.skipped = skipped
        self.measuring = measuring
        self.measured: list[dict] = list(measured or [])  # restored from the checkpoint a run resumes
        self.stopped = False  # a measurement ended training (Measuring.stop)
        self.health = StepHealth(self.rt)
        self.last: dict = {}
        self.window_start, self.window_images = time.perf_counter(), 0

    def save(self, step: int) -> None:
        state = {
            "stage": self.stage,
            "step": step,
            "fingerprint": self.training.fingerprint(),
            **self.trainer.state(),
            "recipe": self.recipe.state_dict(),
            "rng": _rng_state(self.rt),
            "skipped": self.skipped,
            "measured": self.measured,
            "stopped": self.stopped,
            "last": self.last,  # the report's last logged metrics, for a run resumed after it stopped
        }
        # A write that fails (a full disk) ends every process alike, with the main process's line.
        self.rt.agree(self._write_checkpoint, step, state)
        self.rt.barrier()

    def _write_checkpoint(self, step: int, state: dict) -> None:
        if self.rt.is_main:
            self.run.save_checkpoint(step, self.trainer.module.state_dict(), state, self.metadata)

    def after_step(self, step: int, loss: torch.Tensor, terms: dict, lr: float, rows: int, stop: _StopFlag) -> bool:
        """Book step ``step`` (counted from 1); returns whether it logged (the progress bar shows its loss)."""
        training, plan = self.training, self.plan
        self.window_images += rows * self.rt.world_size
        # Every step on one process; under torchrun only at these points, where every rank must agree on stopping.
        epoch_end = step % plan.per_epoch == 0
        measured = self.measuring is not None and self.measuring.due(step, plan.per_epoch)
        due_save = step % training.save_every == 0 or epoch_end or step == plan.total or measured
        stop_seen = stop.signal is not None and not self.rt.distributed
        if not (due_save or stop_seen or step % training.log_every == 0):
            return False
        report = self.health.check(loss, terms, stopping=stop.signal is not None)
        if report.bad_step is not None:
            kept = self.run.latest_checkpoint()
            where = f"last good checkpoint kept: {kept}" if kept else "no checkpoint had been written yet"
            bad_lr = optim.lr_for(report.bad_step - 1, plan.total, training)
            raise UserError(f"loss became {report.bad_value} at step {report.bad_step} (lr {bad_lr:.3g}); {where}")
        self.skipped["corrupt_image"] += report.corrupt
        logged = step % training.log_every == 0 or step == plan.total or measured
        if logged:
            now = time.perf_counter()
            self.last = {"step": step, "epoch": plan.epoch(step), "lr": lr, "loss": report.loss}
            self.last.update({f"loss_{k}": v for k, v in report.terms.items()})
            self.last["images_per_s"] = round(self.window_images / max(now - self.window_start, 1e-9), 2)
            fields = self._measure(step) if measured else {}
            # Logged before the step's checkpoint: a resumed run keeps the line or measures again.
            self.run.log_metrics({"stage": self.stage, **self.last, **fields})
            self.window_start, self.window_images = time.perf_counter(), 0  # the measuring is not training throughput
        if due_save or report.stopping:
            self.save(step)
        if report.stopping:
            raise Interrupted(f"interrupted at step {step}; resume with --resume --run-dir {self.run.path}")
        return logged

    def _measure(self, step: int) -> dict:
        """The job's fields at ``step``, measured in eval mode (training mode, frozen BatchNorm too,
        restored after); kept for the checkpoint, and ends training if ``Measuring.stop`` says so."""
        module = self.trainer.module
        module.eval()
        try:
            fields = self.measuring.measure(module)
        finally:
            _set_train_mode(module, self.training.batchnorm)
        self.measured.append({"step": step, "epoch": self.plan.epoch(step), **fields})
        self.stopped = self.measuring.stop is not None and step < self.plan.total and bool(self.measuring.stop(fields))
        return fields


def _start(trainer: Trainer, skipped: dict) -> tuple[int, dict]:
    torch.manual_seed(trainer.training.seed)
    optim.allocate_state(trainer.optimizer)  # before any activation (see its docstring)
    return 0, {"skipped": skipped}


def _resume(trainer: Trainer, recipe, run: RunDir, latest, stage: str) -> tuple[int, dict]:
    """Weights, optimizer, recipe and RNG state from the newest checkpoint; returns its step and state."""
    rt = trainer.rt
    tensors, state = rt.agree(_resume_state, run, latest, trainer.training, stage, rt.device)  # a bad resume ends every process alike
    trainer.load_state(tensors, state)
    rt.agree(recipe.load_state_dict, state["recipe"])
    _restore_rng(state["rng"], rt)
    run.truncate_metrics(state["step"])
    return state["step"], state


def train(
    module: nn.Module,
    recipe,
    samples: RecipeSamples,
    training: TrainConfig,
    rt: Runtime,
    run: RunDir,
    *,
    resume: bool = False,
    checkpoint_metadata: dict[str, str] | None = None,
    stage: str = "train",
    measuring: Measuring | None = None,
) -> TrainResult:
    """Train ``module`` with ``recipe`` on ``samples``; returns when done, raises Interrupted on a signal.

    ``measuring``: what to measure at every epoch end (and every N steps), outside the step, in eval
    mode; its fields join that step's metrics.jsonl line, which is always logged, and may end training."""
    plan = StepPlan.of(len(samples), training, rt)
    module = rt.sync_batchnorm(module.to(rt.device), training.batchnorm)
    speed.prepare_model(module, training, rt)
    trainer = Trainer(module, training, rt)
    skipped = dict(getattr(samples.captions, "skipped", {}) or {})
    skipped.setdefault("corrupt_image", 0)
    latest = run.latest_checkpoint() if resume else None
    step, state = _resume(trainer, recipe, run, latest, stage) if latest is not None else _start(trainer, skipped)
    resumed_from = step if latest is not None else None
    books = Bookkeeper(trainer, recipe, plan, run, stage, checkpoint_metadata or {}, state["skipped"], measuring, state.get("measured"))
    books.last = state.get("last", {})
    if state.get("stopped"):  # a measurement ended this run before it was interrupted: nothing is left to train
        module.eval()
        return TrainResult(step, plan.epoch(step), 0.0, books.skipped, books.last, resumed_from, books.measured, stopped=True)

    order = recipe.epoch_order(len(samples), plan.global_batch, training.seed)
    sampler = EpochBatchSampler(
        len(samples), plan.global_batch, training.seed, plan.total, start_step=step, rank=rt.rank, world_size=rt.world_size, epoch_order=order
    )
    loader = build_loader(samples, sampler, training.workers, pin_memory=rt.device.type == "cuda")
    bar = _progress_bar(training, rt, plan.total, step, stage)
    started = time.perf_counter()
    _set_train_mode(module, training.batchnorm)
    try:
        with _StopFlag() as stop:
            for host in loader:
                if step % plan.per_epoch == 0:
                    recipe.begin_epoch(step // plan.per_epoch)
                books.health.corrupt += host.pop("n_corrupt")
                lr = optim.lr_for(step, plan.total, training)
                rows = int(host["index"].shape[0])
                rt.begin_step(rows)
                loss, terms = trainer.step(recipe, recipe.device_views(to_device(host, rt.device), host), lr)
                books.health.watch(loss, step)
                step += 1
                if bar is not None:
                    bar.update(1)
                if books.after_step(step, loss, terms, lr, rows, stop) and bar is not None:
                    bar.set_postfix(loss=f"{books.last['loss']:.4f}")
                if books.stopped:
                    break
    finally:
        trainer.grad_sync.close()
        if bar is not None:
            bar.close()
    module.eval()
    return TrainResult(step, plan.epoch(step), time.perf_counter() - started, books.skipped, books.last, resumed_from, books.measured, books.stopped)


def _progress_bar(training: TrainConfig, rt: Runtime, total: int, step: int, stage: str):
    if not (training.progress and rt.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=step, desc=stage, file=sys.stderr, dynamic_ncols=True)
