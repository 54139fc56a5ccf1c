"""The skeleton every training command shares (purify, poison, craft-adv), set up once:

    with job_runtime(...) as rt, open_job(command, rt, ...) as job:   # inputs agreed, run dir open
        job.record(...)                                              # RUN_DIR/config.json
        result = job.fit(module, recipe, training, metadata)         # the engine's one loop
        job.write(output, metadata)                                  # the model, in MODEL's layout

Under torchrun every process runs it; what only the main process may do (announce, write) is
done here, and every check of the inputs goes through ``Runtime.agree`` so that a bad input ends
every process with one message.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clipsan.checkpoints import LoadedModel, load_model
from clipsan.checkpoints.output import OutputPlan, plan_output, write_output
from clipsan.config import CaptionData, TrainConfig
from clipsan.engine.loader import RecipeSamples
from clipsan.engine.loop import Measuring, TrainResult, train
from clipsan.engine.rundir import RunDir, default_run_dir, run_record
from clipsan.engine.runtime import Runtime, setup_runtime, shutdown_runtime
from clipsan.engine.speed import configure_kernels
from clipsan.reports import TrainingReport

Notes = Callable[[str], None]
# A defended victim keeps the record of the attack it was built with, so
# `clipsan eval --trigger from-metadata` can measure what the defense left.
INHERITED_METADATA = ("clipsan.trigger", "clipsan.target")


def open_captions(data: CaptionData):
    """The caption dataset ``data`` points at (indexed once; skipped pairs counted)."""
    from clipsan.data.captions import open_caption_dataset

    reading = {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.name != "path"}  # the reader's keywords, by name
    return open_caption_dataset(data.path, **reading)


@contextlib.contextmanager
def job_runtime(device: str, precision: str, deterministic: bool = False) -> Iterator[Runtime]:
    """The runtime of one job, joined once (the process group under torchrun) and left at the end."""
    rt = setup_runtime(device, precision)
    try:
        configure_kernels(deterministic, rt)  # before any CUDA kernel (a recipe may run one in prepare_run)
        yield rt
    finally:
        shutdown_runtime(rt)


@dataclass
class TrainingJob:
    """A training command's inputs and run directory, agreed on by every process."""

    command: str  # purify | poison | craft-adv
    rt: Runtime
    model: LoadedModel  # what MODEL was read as
    captions: object  # the training pairs (clipsan.data.captions.CaptionDataset)
    run: RunDir  # open and locked by the main process
    resume: bool
    notes: Notes

    def record(self, method: str, recipe_options: dict, training: TrainConfig, **inputs) -> None:
        """RUN_DIR/config.json: the resolved options, inputs (MODEL, the data, and ``inputs``), runtime and versions."""
        inputs = {"model": self.model.record(), "data": str(self.captions.root), **inputs}
        self.run.write_config(run_record(self.command, method, recipe_options, training, inputs, self.rt))

    def plan_output(self, out_format: str, out: str | None) -> OutputPlan:
        """Where the model will go, decided before training: a --out that cannot be written fails now."""
        loaded = self.model
        return self.rt.agree(plan_output, out_format, out, self.run.path / self.command, loaded.source, loaded.model.model_cfg, loaded.arch)

    def output_metadata(self, method: str) -> dict[str, str]:
        """safetensors metadata of what this job writes: provenance, and the attack record it inherits."""
        metadata = {"clipsan.command": self.command, "clipsan.method": method, "clipsan.source_sha256": self.model.sha256}
        metadata.update({k: v for k, v in self.model.metadata.items() if k in INHERITED_METADATA})
        return metadata

    def fit(self, module, recipe, training: TrainConfig, metadata: dict[str, str], stage: str = "train", measuring: Measuring | None = None) -> TrainResult:
        """Train ``module`` (the model, or what a recipe trains against it) with ``recipe`` on the job's pairs
        (``measuring``: what to measure at every epoch end, and whether it ends training: ``clipsan.engine.loop``)."""
        model = self.model.model
        samples = RecipeSamples(self.captions, recipe, model.image_size, model.tokenizer, training.seed)
        return train(module, recipe, samples, training, self.rt, self.run, resume=self.resume, checkpoint_metadata=metadata, stage=stage, measuring=measuring)

    def write(self, output: OutputPlan, metadata: dict[str, str]) -> None:
        if self.rt.is_main:
            write_output(output, self.model.model.cpu(), self.model.source, metadata)

    def report(self, output: str, method: str, result: TrainResult, output_format: str = "safetensors") -> TrainingReport:
        return TrainingReport(
            output=output,
            run_dir=str(self.run.path),
            method=method,
            source_sha256=self.model.sha256,
            steps=result.steps,
            epochs=result.epochs_completed,
            resumed_from_step=result.resumed_from,
            seconds=round(result.seconds, 2),
            samples=len(self.captions),
            skipped=result.skipped,
            final=result.last,
            **self.model.report_fields(),
            output_format=output_format,
        )


@contextlib.contextmanager
def open_job(command: str, rt: Runtime, config, notes: Notes) -> Iterator[TrainingJob]:
    """Open ``config``'s data and model on every process alike, announce them, and open its run directory.

    ``config``: a PurifyConfig, PoisonConfig or CraftAdvConfig (model, arch, data, run_dir, resume).
    Opened after the process group is joined, a bad --data or MODEL ends every torchrun process
    with one message (``Runtime.agree``) instead of one per process.
    """
    captions = rt.agree(open_captions, config.data)
    loaded = rt.agree(load_model, config.model, arch=config.arch)
    if rt.is_main:
        loaded.announce(notes)
        notes(f"data {captions.describe()}")
    path = Path(rt.broadcast_object(str(Path(config.run_dir) if config.run_dir else default_run_dir(command))))
    with rt.agree(RunDir(path, is_main=rt.is_main).open, resume=config.resume) as run:
        yield TrainingJob(command, rt, loaded, captions, run, config.resume, notes)
