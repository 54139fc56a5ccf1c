"""The lab: the whole pipeline on the synthetic world, no download needed.

world -> clean model -> victims (poison) -> defenses (purify) + scans -> eval
-> lab.json / lab.md

Every stage after the world is a real ``clipsan`` command run in its own
process, on the files the previous stages wrote, exactly as a user would run
it. Independent stages run side by side (two single-threaded processes beat
one two-threaded process on the 2-core machines the budgets are set for).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from clipsan import __version__
from clipsan.atomic import atomic_path, atomic_write_bytes, write_errors, write_json
from clipsan.checkpoints.output import SAFETENSORS, OutputPlan, write_output
from clipsan.checkpoints.tokenizer_files import siglip_tokenizer
from clipsan.config import WorldConfig
from clipsan.config.jobs import FROM_METADATA
from clipsan.config.lab import EVAL_PER_CLASS, LabConfig
from clipsan.data import world
from clipsan.errors import UserError
from clipsan.lab.jobs import Job, run_jobs
from clipsan.lab.pareto import draw_pareto
from clipsan.lab.plan import LAB_TEMPLATES, LabPlan, make_plan, method_of
from clipsan.lab.tables import lab_row, render_markdown
from clipsan.lab.world_tokenizer import write_world_tokenizer
from clipsan.models import create_model
from clipsan.models.registry import CONFIG_DIR


@dataclass
class LabReport:
    rows: list = field(default_factory=list)
    scan: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipsan" / "lab"


def _cache_key(plan: LabPlan, config: LabConfig) -> str:
    arch_config = (CONFIG_DIR / f"{plan.arch}.json").read_text()
    # Threads change the clean model's rounding: a model trained with other threads is another model.
    blob = json.dumps([__version__, asdict(WorldConfig()), arch_config, plan.clean_args, plan.train_pairs, config.seed, config.parallel], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Timer:
    def __init__(self, timings: dict, name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = round(time.perf_counter() - self.start, 1)


@dataclass
class WorldFiles:
    train: Path  # caption data the clean model and the victims are trained on
    defense: Path  # held-out clean caption data the defenses fine-tune on
    eval: Path  # labelled ImageFolder
    templates: Path
    stamp: Path  # what the world was generated from; stages that read it depend on it

    @property
    def tokenizer(self) -> Path:
        """The SigLIP family's tokenizer folder (lab/world_tokenizer.py), written with its clean model's init."""
        return self.stamp.parent / "tokenizer"


def build_world(config: LabConfig, plan: LabPlan, report: LabReport) -> WorldFiles:
    root = config.out / "world"
    files = WorldFiles(root / "train", root / "defense", root / "eval", root / "templates.txt", root / "world.json")
    recipe = {
        "version": __version__,
        "config": asdict(WorldConfig()),
        "seed": config.seed,
        "train_pairs": plan.train_pairs,
        "defense_pairs": plan.defense_pairs,
        "eval_per_class": config.eval_per_class or EVAL_PER_CLASS,
        "templates": list(LAB_TEMPLATES),
    }
    with _Timer(report.timings, "world"):
        if files.stamp.is_file() and json.loads(files.stamp.read_text()) == recipe:
            return files
        shutil.rmtree(root, ignore_errors=True)  # absent, half written, or generated with other settings
        world.write_caption_dataset(files.train, plan.train_pairs, seed=config.seed)
        world.write_caption_dataset(files.defense, plan.defense_pairs, seed=config.seed + 1000)
        world.write_eval_set(files.eval, recipe["eval_per_class"], seed=config.seed + 1)
        atomic_write_bytes(files.templates, ("\n".join(LAB_TEMPLATES) + "\n").encode())
        atomic_write_bytes(files.stamp, json.dumps(recipe, sort_keys=True).encode())  # last: its presence means "complete"
    return files


FAMILY_FILE = "family.txt"  # OUT's model family: one lab folder holds one family's stages


def claim_folder(out: Path, family: str) -> None:
    """Make ``out`` this family's lab folder, or refuse one holding another family's lab (its stages would mix)."""
    marker = out / FAMILY_FILE
    found = None
    if marker.is_file():
        found = marker.read_text(errors="replace").strip()
    elif (out / "models").is_dir():
        found = "clip"  # a lab folder from before the families
    if found is not None and found != family:
        raise UserError(f"{out}: holds a --family {found} lab; give --family {family} a folder of its own (--out)")
    with write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        atomic_write_bytes(marker, f"{family}\n".encode())


def _common(config: LabConfig, seed: int | None = None) -> list[str]:
    extra = ["--max-steps", str(config.max_steps)] if config.max_steps else []
    return ["--device", config.device, "--seed", str(config.seed if seed is None else seed), "--workers", "0", *extra]


def defense_stage(defense: str, attack: str, seed_index: int) -> str:
    """A defense stage's name (its log, run dir and model file): the first seed keeps the plain name."""
    return f"{defense}-{attack}" + (f"-s{seed_index}" if seed_index else "")


def defense_model(models: Path, defense: str, attack: str, seed_index: int) -> Path:
    return models / (f"{attack}-{defense}" + (f"-s{seed_index}" if seed_index else "") + ".safetensors")


def train_clean_model(config: LabConfig, plan: LabPlan, files: WorldFiles, report: LabReport) -> Path:
    models = config.out / "models"
    with write_errors(models):
        models.mkdir(parents=True, exist_ok=True)
    target = models / "clean.safetensors"
    cached = _cache_dir() / f"clean-{_cache_key(plan, config)}.safetensors"
    with _Timer(report.timings, "clean_model"):
        if config.use_cache and cached.exists():
            _copy_model(cached, target)
            report.settings["clean_model_cached"] = True
            return target
        init = models / "init.safetensors"
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)  # the init is part of the result: same seed, same clean model
            model = create_model(plan.arch)
        if model.is_sigmoid:  # a SigLIP model tokenises with its own file, written beside each of its checkpoints
            model.file_tokenizer = siglip_tokenizer(write_world_tokenizer(files.tokenizer, LAB_TEMPLATES), model.context_length)
        write_output(OutputPlan(SAFETENSORS, init), model, None, {"clipsan.command": "lab", "clipsan.method": "random-init"})
        job = Job(
            "clean",
            [
                "purify",
                str(init),
                "--method",
                "ft",
                "--data",
                str(files.train),
                "--out",
                str(target),
                "--run-dir",
                str(config.out / "runs" / "clean"),
                *plan.clean_args,
                *_common(config),
            ],
            config.out / "logs",
            inputs=[files.stamp],
            threads=config.parallel,  # nothing else can run until it is done
        )
        _run_or_fail([job], config)
        for path in _model_files(init):
            path.unlink()
        if config.use_cache:
            with write_errors(cached.parent):
                cached.parent.mkdir(parents=True, exist_ok=True)
            _copy_model(target, cached)
    return target


def _model_files(model: Path) -> list[Path]:
    """A model file and what clipsan writes beside it (a SigLIP model's tokenizer, ``<stem>.tokenizer.json``), the model last."""
    beside = [p for p in model.parent.glob(glob.escape(model.stem) + ".*") if p != model]
    return [*sorted(beside), model]


def _copy_model(source: Path, target: Path) -> None:
    """A model and its companions, the model last (its presence says the copy is whole)."""
    for path in _model_files(source):
        _copy(path, target.with_name(target.stem + path.name[len(source.stem) :]))


def _copy(source: Path, target: Path) -> None:
    """Atomically: a lab killed while copying leaves no truncated model (or cache entry) behind."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _run_or_fail(jobs: list[Job], config: LabConfig) -> dict[str, Job]:
    done = run_jobs(jobs, parallel=config.parallel)
    failed = [job for job in done.values() if not job.ok]
    if failed:
        raise UserError("lab stage failed: " + "; ".join(f"{job.name} (exit {job.returncode}{job.last_error()}, see {job.log})" for job in failed))
    return done


def stage_jobs(config: LabConfig, plan: LabPlan, files: WorldFiles, clean: Path) -> list[Job]:
    """Victims, their defenses and the scans, with their dependencies.

    Jobs start in list order as their inputs become ready: victims first, then the defenses
    seed by seed (a lab stopped early has whole tables for its first seeds), then the scans.
    """
    logs, runs, models = config.out / "logs", config.out / "runs", config.out / "models"
    jobs: list[Job] = []
    for attack, poison_args in plan.attacks.items():
        argv = ["poison", str(clean), "--data", str(files.train), "--out", str(models / f"victim-{attack}.safetensors")]
        argv += ["--run-dir", str(runs / f"poison-{attack}"), *poison_args, *_common(config)]
        jobs.append(Job(f"poison-{attack}", argv, logs, inputs=[files.stamp]))
    for index, seed in enumerate(config.defense_seed_values):
        for attack in plan.attacks:
            for defense, defense_args in plan.defenses_for(attack).items():
                name = defense_stage(defense, attack, index)
                argv = ["purify", str(models / f"victim-{attack}.safetensors"), "--method", method_of(defense), "--data", str(files.defense)]
                argv += ["--out", str(defense_model(models, defense, attack, index)), "--run-dir", str(runs / name)]
                argv += ["--reference", str(clean)] if method_of(defense) == "abd" else []
                jobs.append(Job(name, [*argv, *defense_args, *_common(config, seed)], logs, after=[f"poison-{attack}"], inputs=[files.stamp]))
    if plan.scan_args is not None:
        for attack in plan.attacks:
            jobs.append(_scan_job(f"scan-{attack}", models / f"victim-{attack}.safetensors", config, plan, files, clean, after=[f"poison-{attack}"]))
        jobs.append(_scan_job("scan-clean", clean, config, plan, files, clean, after=[]))
    return jobs


def _scan_job(name: str, model: Path, config: LabConfig, plan: LabPlan, files: WorldFiles, clean: Path, after: list[str]) -> Job:
    # The clean model is the reference a user would have (the base the suspect was tuned from):
    # it adds the divergence probe that catches blended triggers DECREE misses.
    argv = [
        "scan",
        str(model),
        "--reference",
        str(clean),
        "--run-dir",
        str(config.out / "runs" / name),
        "--device",
        config.device,
        "--seed",
        str(config.seed),
        *plan.scan_args,
    ]
    # scan's exit 1 means "backdoor evidence": a result, not a failure.
    return Job(name, argv, config.out / "logs", after=after, ok_codes=(0, 1), inputs=[files.stamp], resumable=False)


def evaluate_models(models: list[Path], files: WorldFiles, config: LabConfig, trigger: bool, name: str | None = None) -> list[dict]:
    """`clipsan eval` of ``models`` on the world's labelled set (clean, or under each victim's own trigger)."""
    argv = [
        "eval",
        *map(str, models),
        "--data",
        str(files.eval),
        "--templates",
        str(files.templates),
        "--topk",
        "1,10",
        "--device",
        config.device,
        "--workers",
        "0",
        "--batch-size",
        "256",
    ]
    if trigger:
        argv += ["--trigger", FROM_METADATA]
    name = name or "eval-" + models[0].stem
    job = _run_or_fail([Job(name, argv, config.out / "logs", inputs=[files.stamp], threads=config.parallel)], config)[name]
    return job.report()["models"]


def _run_record(result: dict, seed: int) -> dict:
    return {"seed": seed, "model": result["model"], "ca": result["ca"], "asr": result.get("asr"), "n_images": result["n_images"]}


def collect_rows(config: LabConfig, plan: LabPlan, files: WorldFiles, clean: Path, report: LabReport) -> None:
    models, seeds = config.out / "models", config.defense_seed_values
    with _Timer(report.timings, "eval"):
        result = evaluate_models([clean], files, config, trigger=False)[0]
        report.rows.append(lab_row("none", "none", [_run_record(result, config.seed)]))
        for attack in plan.attacks:
            defenses = list(plan.defenses_for(attack))
            paths = [models / f"victim-{attack}.safetensors"]
            paths += [defense_model(models, d, attack, i) for d in defenses for i in range(len(seeds))]
            results = evaluate_models(paths, files, config, trigger=True)
            report.rows.append(lab_row(attack, "none", [_run_record(results[0], config.seed)]))
            for j, defense in enumerate(defenses):
                runs = results[1 + j * len(seeds) : 1 + (j + 1) * len(seeds)]
                report.rows.append(lab_row(attack, defense, [_run_record(r, seed) for r, seed in zip(runs, seeds)]))


def collect_scans(done: dict[str, Job], plan: LabPlan, clean: Path, report: LabReport) -> None:
    for name, job in sorted(done.items()):
        if not name.startswith("scan-"):
            continue
        result = job.report()
        attack = name[len("scan-") :]
        report.scan.append(
            {
                "model": Path(job.argv[1]).name,
                "attack": "none" if attack == "clean" else attack,
                "verdict": result["verdict"],
                "statistic": result["statistic"],
                "threshold": result["threshold"],
                "target_guess": (result.get("target") or {}).get("label"),
            }
        )


def write_report(config: LabConfig, report: LabReport) -> None:
    payload = asdict(report)
    if any(r["attack"] != "none" for r in report.rows):
        draw_pareto(report.rows, config.out / "pareto.png", family=config.family)
    write_json(config.out / "lab.json", payload)
    atomic_write_bytes(config.out / "lab.md", render_markdown(payload).encode())


def run_lab(config: LabConfig, notes=print) -> dict:
    plan = make_plan(config.quick, config.train_pairs, config.max_steps, config.attacks, config.family)  # first: bad settings leave OUT untouched
    claim_folder(config.out, config.family)
    settings = {
        "quick": config.quick,
        "seed": config.seed,
        "defense_seeds": config.defense_seed_values,
        "family": plan.family,
        "arch": plan.arch,
        "plan": plan.describe(),
    }
    report = LabReport(settings=settings)
    started = time.perf_counter()
    files = build_world(config, plan, report)
    notes(f"world written to {config.out / 'world'}")
    clean = train_clean_model(config, plan, files, report)
    notes(f"clean model {clean}")
    with _Timer(report.timings, "victims_defenses_scans"):
        done = _run_or_fail(stage_jobs(config, plan, files, clean), config)
    for name, job in done.items():
        report.timings[name] = job.seconds
    report.settings["reused_stages"] = sorted(name for name, job in done.items() if job.reused)
    collect_scans(done, plan, clean, report)
    collect_rows(config, plan, files, clean, report)
    report.timings["total"] = round(time.perf_counter() - started, 1)
    write_report(config, report)
    return asdict(report)
