"""The one training loop every recipe runs on.

read batch -> recipe.loss_terms -> backward -> sum grads over processes ->
clip -> AdamW step -> recipe.after_step; log, checkpoint, honour signals.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from clipsan.engine import optim, speed
from clipsan.engine.config import TrainConfig
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


def _resume_state(run: RunDir, latest, cfg: TrainConfig, stage: str, device: torch.device) -> tuple[dict, dict]:
    """The newest checkpoint's weights and state, on ``device``, if it belongs to this run's stage and options."""
    tensors, state = run.load_checkpoint(latest, device)
    if state.get("stage", "train") != stage:
        raise UserError(f"{latest}: checkpoint belongs to stage {state.get('stage')!r}, not {stage!r}")
    if state["fingerprint"] != cfg.fingerprint():
        changed = sorted(k for k in cfg.fingerprint() if state["fingerprint"].get(k) != cfg.fingerprint()[k])
        raise UserError(f"{run.path}: --resume with different options ({', '.join(changed)}); use the original ones")
    return tensors, state


def train(
    module: nn.Module,
    recipe,
    samples: RecipeSamples,
    cfg: TrainConfig,
    rt: Runtime,
    run: RunDir,
    *,
    resume: bool = False,
    checkpoint_metadata: dict[str, str] | None = None,
    stage: str = "train",
) -> TrainResult:
    """Train ``module`` with ``recipe`` on ``samples``; returns when done, raises Interrupted on a signal."""
    n = len(samples)
    global_batch = min(cfg.batch_size, n) // rt.world_size * rt.world_size
    if global_batch < 1:
        raise UserError(f"batch size {cfg.batch_size} is smaller than the {rt.world_size} processes")
    per_epoch = steps_per_epoch(n, global_batch)
    total = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)

    module = rt.sync_batchnorm(module.to(rt.device), cfg.batchnorm)
    speed.prepare_model(module, cfg, rt)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = optim.build_optimizer(module, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
    scaler = rt.grad_scaler()
    skipped = dict(getattr(samples.captions, "skipped", {}) or {})
    skipped.setdefault("corrupt_image", 0)

    step, resumed_from = 0, None
    latest = run.latest_checkpoint() if resume else None
    if latest is not None:
        tensors, state = rt.agree(_resume_state, run, latest, cfg, stage, rt.device)  # a bad resume ends every process alike
        module.load_state_dict(tensors)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        rt.agree(recipe.load_state_dict, state["recipe"])
        _restore_rng(state["rng"], rt)
        skipped = state["skipped"]
        step = resumed_from = state["step"]
        run.truncate_metrics(step)
    else:
        torch.manual_seed(cfg.seed)
        optim.allocate_state(optimizer)  # before any activation (see its docstring); resume loaded it above

    def save(at_step: int) -> None:
        state = {
            "stage": stage,
            "step": at_step,
            "fingerprint": cfg.fingerprint(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "recipe": recipe.state_dict(),
            "rng": _rng_state(rt),
            "skipped": skipped,
        }
        if rt.is_main:
            run.save_checkpoint(at_step, module.state_dict(), state, checkpoint_metadata or {})
        rt.barrier()

    order = recipe.epoch_order(n, global_batch, cfg.seed)
    sampler = EpochBatchSampler(n, global_batch, cfg.seed, total, start_step=step, rank=rt.rank, world_size=rt.world_size, epoch_order=order)
    loader = build_loader(samples, sampler, cfg.workers, pin_memory=rt.device.type == "cuda")
    bar = None
    if cfg.progress and rt.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc=stage, file=sys.stderr, dynamic_ncols=True)

    started = time.perf_counter()
    window_start, window_images = time.perf_counter(), 0
    last: dict = {}
    health = StepHealth(rt)
    grad_sync = GradientSync(params, rt.world_size)
    _set_train_mode(module, cfg.batchnorm)
    try:
        with _StopFlag() as stop:
            for host in loader:
                epoch = step // per_epoch
                if step % per_epoch == 0:
                    recipe.begin_epoch(epoch)
                health.corrupt += host.pop("n_corrupt")
                lr = optim.lr_at(step, total, cfg.lr, cfg.warmup_steps, cfg.schedule)
                optim.set_lr(optimizer, lr)
                rows = int(host["index"].shape[0])
                rt.begin_step(rows)
                batch = recipe.device_views(to_device(host, rt.device), host)

                terms = recipe.loss_terms(module, batch, rt)  # not under autocast: recipes encode through rt.encode
                loss = sum(terms.values())
                health.watch(loss, step)
                optimizer.zero_grad(set_to_none=True)  # whatever a recipe's own backward left (freed after each step below)
                scaler.scale(loss).backward()
                grad_sync.finish()
                scaler.unscale_(optimizer)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                # Free the gradients now: they would otherwise sit beside the next step's activations
                # (and beside a checkpoint being written).
                optimizer.zero_grad(set_to_none=True)
                recipe.after_step(module)
                step += 1
                window_images += rows * rt.world_size
                if bar is not None:
                    bar.update(1)

                # Device values are read only here: at log steps, before every checkpoint, at the end,
                # and when a signal came (every step on one process; at these points under torchrun,
                # where every rank must agree on stopping).
                due_save = step % cfg.save_every == 0 or step % per_epoch == 0 or step == total
                stop_seen = stop.signal is not None and not rt.distributed
                if not (due_save or stop_seen or step % cfg.log_every == 0):
                    continue
                report = health.check(loss, terms, stopping=stop.signal is not None)
                if report.bad_step is not None:
                    kept = run.latest_checkpoint()
                    where = f"last good checkpoint kept: {kept}" if kept else "no checkpoint had been written yet"
                    bad_lr = optim.lr_at(report.bad_step - 1, total, cfg.lr, cfg.warmup_steps, cfg.schedule)
                    raise UserError(f"loss became {report.bad_value} at step {report.bad_step} (lr {bad_lr:.3g}); {where}")
                skipped["corrupt_image"] += report.corrupt
                if step % cfg.log_every == 0 or step == total:
                    now = time.perf_counter()
                    last = {"step": step, "epoch": round(step / per_epoch, 4), "lr": lr, "loss": report.loss}
                    last.update({f"loss_{k}": v for k, v in report.terms.items()})
                    last["images_per_s"] = round(window_images / max(now - window_start, 1e-9), 2)
                    run.log_metrics({"stage": stage, **last})
                    window_start, window_images = now, 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{report.loss:.4f}")
                if due_save or report.stopping:
                    save(step)
                if report.stopping:
                    if bar is not None:
                        bar.close()
                    raise Interrupted(f"interrupted at step {step}; resume with --resume --run-dir {run.path}")
    finally:
        grad_sync.close()
    if bar is not None:
        bar.close()
    module.eval()
    return TrainResult(step, round(step / per_epoch, 4), time.perf_counter() - started, skipped, last, resumed_from)
