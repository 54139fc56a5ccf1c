"""The lab: the whole pipeline on the synthetic world, no download needed.

Stages (each reads and writes real files in the layouts users have):
world -> clean model (trained from scratch with the same engine as purify)
-> evaluation -> lab.json / lab.md. Later stages add victims, defenses and
scans as rows of the same report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clipsan import __version__, world
from clipsan.checkpoint import save_model
from clipsan.engine.loop import TrainConfig
from clipsan.evaluation import EvalSpec, evaluate_models
from clipsan.finetune import JobSpec, run_fine_tune
from clipsan.models import create_model
from clipsan.recipes.ft import FineTune

LAB_ARCH = "clipsan-tiny-rn"
# Prompts for zero-shot evaluation on the world (written next to the eval set).
LAB_TEMPLATES = ("a photo of a {}.", "a {}.", "an illustration of a {}.", "a drawing of a {}.")


@dataclass
class LabOptions:
    out: Path
    quick: bool = True
    seed: int = 0
    workers: int = 1
    device: str = "cpu"
    train_pairs: int | None = None  # override the world's size (smoke tests)
    max_steps: int | None = None  # override training length (smoke tests)
    eval_per_class: int | None = None
    use_cache: bool = True


@dataclass
class LabReport:
    rows: list = field(default_factory=list)
    scan: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipsan" / "lab"


def _clean_training(opts: LabOptions) -> dict:
    settings = dict(world.QUICK_TRAINING if opts.quick else world.FULL_TRAINING)
    if opts.train_pairs is not None:
        settings["n_pairs"] = opts.train_pairs
    settings["max_steps"] = opts.max_steps
    return settings


def _cache_key(settings: dict, opts: LabOptions) -> str:
    arch_config = (Path(__file__).parent / "model_configs" / f"{LAB_ARCH}.json").read_text()
    blob = json.dumps([__version__, asdict(world.WorldConfig()), arch_config, settings, opts.seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Timer:
    def __init__(self, timings: dict, name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = round(time.perf_counter() - self.start, 1)


def build_world(opts: LabOptions, settings: dict, report: LabReport) -> tuple[Path, Path, Path]:
    root = opts.out / "world"
    train_dir, eval_dir = root / "train", root / "eval"
    with _Timer(report.timings, "world"):
        if not (train_dir / "captions.csv").exists():
            world.write_caption_dataset(train_dir, settings["n_pairs"], seed=opts.seed)
        if not eval_dir.exists():
            per_class = opts.eval_per_class or world.EVAL_PER_CLASS
            world.write_eval_set(eval_dir, per_class, seed=opts.seed + 1)
        templates = root / "templates.txt"
        templates.write_text("\n".join(LAB_TEMPLATES) + "\n")
    return train_dir, eval_dir, templates


def train_clean_model(opts: LabOptions, settings: dict, train_dir: Path, report: LabReport, notes) -> Path:
    models = opts.out / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / "clean.safetensors"
    cached = _cache_dir() / f"clean-{_cache_key(settings, opts)}.safetensors"
    with _Timer(report.timings, "clean_model"):
        if opts.use_cache and cached.exists():
            notes(f"clean model from cache {cached}")
            shutil.copyfile(cached, target)
            report.settings["clean_model_cached"] = True
            return target
        init = models / "init.safetensors"
        save_model(create_model(LAB_ARCH), init, {"clipsan.command": "lab", "clipsan.method": "random-init"})
        cfg = TrainConfig(
            epochs=settings["epochs"],
            batch_size=settings["batch_size"],
            lr=settings["lr"],
            warmup_steps=settings["warmup"],
            weight_decay=settings["weight_decay"],
            seed=opts.seed,
            workers=opts.workers,
            save_every=10_000,
            log_every=50,
            max_steps=settings["max_steps"],
            batchnorm="train",  # trained from scratch: BatchNorm must learn its statistics
        )
        from clipsan.data.captions import open_caption_dataset

        job = JobSpec("lab-clean", str(init), LAB_ARCH, str(target), str(opts.out / "runs" / "clean"), resume=False, device=opts.device)
        result = run_fine_tune(job, FineTune(), open_caption_dataset(train_dir), cfg, notes=notes)
        report.settings["clean_training"] = {**settings, "steps": result["steps"], "seconds": result["seconds"]}
        init.unlink()
        if opts.use_cache:
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target, cached)
    return target


def evaluate_row(model: Path, eval_dir: Path, templates: Path, opts: LabOptions, attack: str, defense: str, trigger: str | None = None) -> dict:
    spec = EvalSpec(
        models=[str(model)],
        data=str(eval_dir),
        trigger=trigger,
        ks=(1, 10),
        templates=str(templates),
        workers=0,
        device=opts.device,
        batch_size=256,
    )
    result = evaluate_models(spec, notes=lambda _m: None)["models"][0]
    return {"attack": attack, "defense": defense, "model": str(model), "ca": result["ca"], "asr": result["asr"], "n_images": result["n_images"]}


def write_report(opts: LabOptions, report: LabReport) -> None:
    payload = asdict(report)
    (opts.out / "lab.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (opts.out / "lab.md").write_text(render_markdown(payload))


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def render_markdown(payload: dict) -> str:
    lines = [
        "# clipsan lab",
        "",
        "Zero-shot results on the synthetic world (%, target class `banana`; ASR excludes target-class images).",
        "",
        "| attack | defense | CA@1 | ASR@1 | ASR@10 |",
        "|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        asr = row.get("asr") or {}
        lines.append(f"| {row['attack']} | {row['defense']} | {_pct(row['ca'].get('1'))} | {_pct(asr.get('1'))} | {_pct(asr.get('10'))} |")
    if payload["scan"]:
        lines += ["", "## Scan", "", "| model | attack | verdict | statistic | threshold | target guess |", "|---|---|---|---|---|---|"]
        for s in payload["scan"]:
            lines.append(f"| {s['model']} | {s['attack']} | {s['verdict']} | {s['statistic']:.4g} | {s['threshold']:.4g} | {s.get('target_guess') or '-'} |")
    lines += ["", "## Timings (s)", ""] + [f"- {k}: {v}" for k, v in payload["timings"].items()]
    return "\n".join(lines) + "\n"


def run_lab(opts: LabOptions, notes=print) -> dict:
    opts.out.mkdir(parents=True, exist_ok=True)
    report = LabReport(settings={"quick": opts.quick, "seed": opts.seed, "arch": LAB_ARCH})
    started = time.perf_counter()
    settings = _clean_training(opts)
    train_dir, eval_dir, templates = build_world(opts, settings, report)
    notes(f"world written to {opts.out / 'world'}")
    clean = train_clean_model(opts, settings, train_dir, report, notes)
    with _Timer(report.timings, "eval_clean"):
        report.rows.append(evaluate_row(clean, eval_dir, templates, opts, "none", "none"))
    notes(f"clean model CA@1 {report.rows[0]['ca']['1']:.3f}")
    report.timings["total"] = round(time.perf_counter() - started, 1)
    write_report(opts, report)
    return asdict(report)
