"""Every recipe's GPU throughput, as clipsan's commands run it, in one Markdown table.

    python benchmarks/gpu.py [--steps 20] [--archs RN50,ViT-B-32] [--workers N]
    python benchmarks/gpu.py --cpu-smoke --steps 2         (tiny arch on CPU: checks the script itself)

On a CUDA machine: ft / cleanclip / cleanerclip / abd (craft and fine-tune) / scan / eval at 224 px,
batch 128 (abd craft 16), bf16 autocast, random-init models, synthetic world images written as JPEG
pairs (so data loading is part of what is measured, at the default --workers). Each training row runs
2N steps and times the second N (the first N include cudnn autotuning and warm-up); scan runs N
inversion steps over 128 probes, eval one pass over the labelled set, timed whole. Columns: images/s,
s/step, peak GPU memory, host syncs (device syncs that torch.cuda's sync debug mode reports during
training, or during the whole command for scan/eval; on CPU, host reads of tensors) and the ratio of
each recipe's s/step to ft's on the same arch.

The targets it is written for (issue #12): cleanclip <= 2.1x ft, abd fine-tune <= 1.15x ft,
cleanerclip <= cleanclip + 5%, and data loading never the bottleneck at the default workers.
Without CUDA (and without --cpu-smoke) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST_READS = REPO / "benchmarks" / "host_reads.py"


def _write_data(root: Path, pairs: int, size: int) -> tuple[Path, Path]:
    from clipsan.config import WorldConfig
    from clipsan.data import world

    captions, labelled = root / "pairs", root / "labelled"
    if not captions.exists():
        config = WorldConfig(image_size=size)
        (captions / "images").mkdir(parents=True)
        rows = ["image,caption"]
        for i in range(pairs):
            image, caption, _ = world.render_sample(config, 0, i)
            image.convert("RGB").save(captions / "images" / f"{i:06d}.jpg", quality=90)
            rows.append(f'images/{i:06d}.jpg,"{caption}"')
        (captions / "pairs.csv").write_text("\n".join(rows) + "\n")
        world.write_eval_set(labelled, max(1, pairs // 64), seed=1, config=config)
    return captions, labelled


def _write_model(root: Path, arch: str) -> Path:
    import torch

    from clipsan.checkpoints import save_model
    from clipsan.models import create_model

    path = root / f"{arch}.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_model(create_model(arch), path)
    return path


class Bench:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.device = "cpu" if args.cpu_smoke else "cuda"
        self.precision = "fp32" if args.cpu_smoke else "bf16"
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(self, name: str, clipsan_args: list[str], scope: str = "train") -> tuple[dict, float, dict]:
        """One clipsan command under the host-read counter; returns its JSON report, wall seconds, counts (benchmarks/host_reads.py)."""
        counts = self.work / f"counts-{name}"
        cmd = [sys.executable, str(HOST_READS), "--scope", scope, str(counts), *clipsan_args, "--device", self.device, "--format", "json"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout), seconds, json.loads(Path(f"{counts}.0").read_text())

    def train_row(self, arch: str, recipe: str, command: list[str], batch: int) -> dict:
        steps = self.args.steps
        run_dir = self.work / f"run-{arch}-{recipe.replace(' ', '-')}"
        args = [*command, "--batch-size", str(batch), "--max-steps", str(2 * steps), "--log-every", str(steps), "--save-every", "1000000"]
        args += ["--run-dir", str(run_dir), "--precision", self.precision, *self._workers()]
        report, _, counts = self.run(f"{arch}-{recipe}", args)
        timed = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
        images_per_s = timed["images_per_s"]
        return self._row(arch, recipe, images_per_s, batch / images_per_s, counts, report)

    def _workers(self) -> list[str]:
        return ["--workers", str(self.args.workers)] if self.args.workers is not None else []

    def _row(self, arch, recipe, images_per_s, step_seconds, counts, report=None) -> dict:
        syncs = counts.get("cuda_syncs", counts["total"])
        return {
            "arch": arch,
            "recipe": recipe,
            "images_per_s": images_per_s,
            "s_per_step": step_seconds,
            "peak_gpu_gb": counts.get("peak_gpu_gb"),
            "syncs": syncs,
        }

    def arch_rows(self, arch: str, data: Path, labelled: Path) -> list[dict]:
        model = str(_write_model(self.work, arch))
        batch, craft_batch = (16, 8) if self.args.cpu_smoke else (128, 16)
        purify = ["purify", model, "--data", str(data), "--lr", "1e-5", "--warmup", "1"]
        rows = [
            self.train_row(arch, "ft", [*purify, "--method", "ft"], batch),
            self.train_row(arch, "cleanclip", [*purify, "--method", "cleanclip"], batch),
            self.train_row(arch, "cleanerclip", [*purify, "--method", "cleanerclip"], batch),
        ]
        craft_dir = self.work / f"craft-{arch}"
        generator = craft_dir / "generator.safetensors"
        craft = ["craft-adv", model, "--data", str(data), "--out", str(generator)]
        rows.append(self.train_row(arch, "abd craft", craft, craft_batch))
        rows.append(self.train_row(arch, "abd fine-tune", [*purify, "--method", "abd", "--generator", str(generator)], batch))
        rows.append(self.scan_row(arch, model))
        rows.append(self.eval_row(arch, model, labelled, batch))
        ft = rows[0]["s_per_step"]
        for row in rows:
            row["x_ft"] = row["s_per_step"] / ft if row["recipe"] in TRAINING_RECIPES else None
        return rows

    def scan_row(self, arch: str, model: str) -> dict:
        probes, steps = (16, self.args.steps) if self.args.cpu_smoke else (128, self.args.steps)
        args = ["scan", model, "--probes", str(probes), "--steps", str(steps), "--run-dir", str(self.work / f"scan-{arch}"), "--precision", self.precision]
        _, _, counts = self.run(f"{arch}-scan", args, scope="all")
        seconds = counts["seconds"]  # the command in-process: model load, probes, inversion, report
        return self._row(arch, "scan", probes * steps / seconds, seconds / steps, counts)

    def eval_row(self, arch: str, model: str, labelled: Path, batch: int) -> dict:
        args = ["eval", model, "--data", str(labelled), "--templates", "photo", "--batch-size", str(batch), "--precision", self.precision, *self._workers()]
        _, _, counts = self.run(f"{arch}-eval", args, scope="all")
        seconds, images = counts["seconds"], _count_images(labelled)  # the command in-process, model load included
        return self._row(arch, "eval", images / seconds, seconds * batch / images, counts)


TRAINING_RECIPES = ("ft", "cleanclip", "cleanerclip", "abd craft", "abd fine-tune")


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg"))


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| arch | recipe | images/s | s/step | peak GPU GB | host syncs | × ft |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["arch"], r["recipe"], _fmt(r["images_per_s"], 2), _fmt(r["s_per_step"], 3), _fmt(r["peak_gpu_gb"], 2), str(r["syncs"]), _fmt(r["x_ft"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per training row (each runs twice as many)")
    parser.add_argument("--archs", default="RN50,ViT-B-32")
    parser.add_argument("--workers", type=int, default=None, help="data workers (default: clipsan's default)")
    parser.add_argument("--cpu-smoke", action="store_true", help="run on CPU with the tiny arch (to check the script, not to measure)")
    parser.add_argument("--work", default=None, help="where data, models and runs go (default: a temporary folder)")
    args = parser.parse_args()

    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu.py: no CUDA device on this machine; nothing measured (use --cpu-smoke to check the script on CPU)")
        return 0
    # models and checkpoints run to gigabytes: a default folder goes when `scratch` does (main's return, or exit)
    scratch = None if args.work else tempfile.TemporaryDirectory(prefix="clipsan-gpu-bench-")
    work = Path(args.work or scratch.name)
    work.mkdir(parents=True, exist_ok=True)
    archs = ["clipsan-tiny-rn"] if args.cpu_smoke else args.archs.split(",")
    rows = []
    for arch in archs:
        size = 32 if args.cpu_smoke else 224
        pairs = 64 if args.cpu_smoke else 128 * (2 * args.steps + 1)
        data, labelled = _write_data(work / f"data-{size}", pairs, size)
        rows += Bench(args, work).arch_rows(arch, data, labelled)
    where = "CPU smoke run (tiny arch, fp32): not a measurement" if args.cpu_smoke else f"{torch.cuda.get_device_name()}, bf16, {args.steps} timed steps"
    print(f"{where}; load {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
