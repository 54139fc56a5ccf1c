"""The run directory: config, metrics log, lock, and atomic checkpoints.

Layout::

    RUN/config.json            resolved options, versions, input sha256s
    RUN/metrics.jsonl          one JSON object per log step
    RUN/checkpoints/step-000000123/{weights.safetensors,state.pt}
    RUN/run.lock               held (flock) while a process works in RUN

A checkpoint is written into a hidden temporary folder, fsynced, then renamed:
a folder named ``step-*`` is always complete. The last two are kept. A write that fails
(``clipsan.atomic.write_errors``) removes its temporary folder and leaves the earlier
checkpoints as they were; what a killed process left behind is removed when the run
directory is next opened.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from clipsan import __version__, strict_json
from clipsan.atomic import append_line, atomic_write_bytes, fsync_dir, fsync_file, is_temporary, open_for_writer, temporary_name, write_errors, write_json
from clipsan.errors import UserError
from clipsan.tensor_files import save_tensors


def versions() -> dict:
    """What a run directory's config.json records as the software that ran."""
    from clipsan.openclip import open_clip

    return {"clipsan": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__}


KEEP_CHECKPOINTS = 2
_PREFIX = "step-"
WEIGHTS, STATE = "weights.safetensors", "state.pt"


def default_run_dir(command: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}-{stamp}"


class RunDir:
    """A run directory owned by this process (main rank) for the duration of a run."""

    def __init__(self, path: str | os.PathLike, *, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self._lock_fh = None

    # --- life cycle -----------------------------------------------------------

    def open(self, *, resume: bool) -> RunDir:
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: --run-dir exists and is not a directory")
        # --resume where no run directory was made yet (the first attempt was killed while starting)
        # starts the run: "the same command again, with --resume" works whenever the kill came.
        if self.is_main:
            with write_errors(self.path):
                self.path.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            if not resume and self.latest_checkpoint() is not None:
                raise UserError(f"{self.path}: run directory already holds checkpoints; pass --resume to continue it or choose another --run-dir")
            with write_errors(self.checkpoint_root):
                self.checkpoint_root.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
        return self

    def _remove_leftovers(self) -> None:
        """Temporary checkpoint folders a killed process left (we hold the lock: nobody is writing them)."""
        for entry in self.checkpoint_root.iterdir():
            if is_temporary(entry.name):
                shutil.rmtree(entry, ignore_errors=True)

    def _take_lock(self) -> None:
        with write_errors(self.path / "run.lock"):
            self._lock_fh = open(self.path / "run.lock", "a+")  # noqa: SIM115 - held for the run, closed by close()
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            raise UserError(f"{self.path}: run directory is in use by another clipsan process") from None
        with write_errors(self.path / "run.lock"):  # the pid, for a person wondering who holds it
            self._lock_fh.seek(0)
            self._lock_fh.truncate()
            self._lock_fh.write(f"{os.getpid()}\n")
            self._lock_fh.flush()

    def close(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- records ----------------------------------------------------------------

    def write_config(self, config: dict) -> None:
        if self.is_main:
            write_json(self.path / "config.json", config)

    def read_config(self) -> dict | None:
        path = self.path / "config.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def log_metrics(self, record: dict) -> None:
        if self.is_main:
            append_line(self.path / "metrics.jsonl", strict_json.dumps(record, sort_keys=True))

    def truncate_metrics(self, after_step: int) -> None:
        """Drop log lines past the resumed checkpoint (and a line a kill cut short), so a resumed log
        reads like an uninterrupted one."""
        path = self.path / "metrics.jsonl"
        if not self.is_main or not path.exists():
            return
        logged = filter(None, map(_logged, path.read_text(errors="replace").splitlines()))
        kept = [text for text, record in logged if record.get("step", 0) <= after_step]
        atomic_write_bytes(path, "".join(text + "\n" for text in kept).encode())

    # --- checkpoints --------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return self.path / "checkpoints"

    def checkpoints(self) -> list[Path]:
        root = self.checkpoint_root
        if not root.is_dir():
            return []
        found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)]
        return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor], state: dict, metadata: dict[str, str]) -> Path:
        """Write weights (safetensors) + training state (state.pt) atomically; keep the last two."""
        final = self.checkpoint_root / f"{_PREFIX}{step:09d}"
        if final.exists():
            return final
        tmp = temporary_name(final)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with write_errors(final / WEIGHTS):
                tmp.mkdir(parents=True)
                save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / WEIGHTS, metadata)
            with write_errors(final / STATE), open_for_writer(tmp / STATE) as fh:
                torch.save(state, fh)
            with write_errors(final):
                for name in (WEIGHTS, STATE):
                    fsync_file(tmp / name)
                fsync_dir(tmp)
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; removed if a write failed
        fsync_dir(self.checkpoint_root)
        for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, folder: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
        """Weights and training state, loaded straight onto ``device`` (no host copy of a large model's state)."""
        # state.pt is our own file (optimizer, RNG states); we only unpickle it after
        # checking it sits inside the run directory this process locked.
        folder = folder.resolve()
        if self.checkpoint_root.resolve() not in folder.parents:
            raise UserError(f"{folder}: not a checkpoint of run directory {self.path}")
        tensors = load_file(str(folder / WEIGHTS), device=str(device))
        state = torch.load(folder / STATE, map_location=device, weights_only=False)
        return tensors, state


def _logged(line: str) -> tuple[str, dict] | None:
    """A metrics.jsonl line and its record; None for a blank line or one a kill cut short."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return (line, record) if isinstance(record, dict) else None


def run_record(command: str, method: str, recipe_options: dict, training, inputs: dict, rt) -> dict:
    """What a training run's config.json says: the command, its resolved options (``training``: a
    TrainConfig), its inputs, where it ran and which software ran it."""
    return {
        "command": command,
        "argv": sys.argv,
        "method": method,
        "recipe": recipe_options,
        "training": training.fingerprint(),
        "inputs": inputs,
        "runtime": {"device": str(rt.device), "precision": rt.precision, "world_size": rt.world_size},
        "versions": versions(),
    }
