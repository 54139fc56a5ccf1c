"""clipsan purify vs CleanCLIP's public training code, side by side on the same data, model and settings.

    python benchmarks/peer_cleanclip.py --peer PATH/TO/CleanCLIP [--method ft|cleanclip] [--pairs 3] [--steps 3]
        [--sides peer,clipsan,clipsan+compile,clipsan+glibc-malloc,clipsan@OTHER_CHECKOUT]

PATH is a checkout of CleanCLIP's public code (github: nishadsinghi/CleanCLIP); it is imported from
there, never copied. Both sides train the same random-init RN50 (OpenAI's layout, QuickGELU) on the
same JPEG pairs: batch 16, fp32, AdamW (wd 0.1, none on bn/ln/bias/logit_scale), BatchNorm in training
mode, the same learning-rate schedule, CPU. ``--method cleanclip`` adds each side's in-modal loss on
AutoAugment / EDA views. Each measurement runs in its own process (so peak RSS is its own), the two
sides alternate, and the first step of each run is warm-up (not timed). Prints images/s and peak RSS
and CPU seconds per step (user + system: what a loaded machine moves least) per run, and each side's
median ratio to the first side. ``clipsan@PATH`` runs another clipsan checkout
(e.g. main's, for before/after figures); ``+compile`` adds --compile; ``+glibc-malloc`` runs clipsan
with glibc's default malloc settings (``clipsan.engine.host_memory`` steps aside when a malloc tunable
is set). ``--arch clipsan-tiny-rn`` works for clipsan sides only (the peer's tokenizer is fixed at 77 tokens).

What the harness supplies to the peer (none of it is in the timed step): a stand-in ``wandb`` module
(not installed here); the peer computes its EDA captions once at dataset build with NLTK's WordNet,
which cannot be downloaded here, so without WordNet those captions are the originals (EDA costs
microseconds per caption and is not part of a training step either way).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCH = "RN50-quickgelu"  # open_clip's name for OpenAI's RN50 (QuickGELU in the text tower)


def make_data(root: Path, n: int, size: int = 256) -> Path:
    """n JPEG pairs from the synthetic world, drawn at ``size`` px (both sides resize/crop to 224)."""
    from clipsan.data.world import WorldConfig, render_sample

    csv_path = root / "pairs.csv"
    if csv_path.exists():
        return csv_path
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image,caption"]
    for i in range(n):
        image, caption, _ = render_sample(WorldConfig(image_size=size), 0, i)
        image.convert("RGB").save(root / "images" / f"{i:05d}.jpg", quality=90)
        lines.append(f'images/{i:05d}.jpg,"{caption}"')
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def make_model(path: Path, arch: str) -> None:
    import torch

    from clipsan.checkpoints import save_model
    from clipsan.models import create_model

    if not path.exists():
        torch.manual_seed(0)
        save_model(create_model(arch), path)


# --------------------------------------------------------------------------- one measurement, in a child


def run_clipsan(args) -> dict:
    checkout = args.checkout or str(REPO)
    run_dir = Path(tempfile.mkdtemp(prefix="peer-bench-clipsan-"))
    try:  # the run dir holds a checkpoint and the purified model (1.6 GB at RN50): never left behind
        return _run_clipsan_in(run_dir, checkout, args)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_clipsan_in(run_dir: Path, checkout: str, args) -> dict:
    cmd = [sys.executable, "-m", "clipsan", "purify", args.model, "--method", args.method, "--data", str(Path(args.csv).parent)]
    cmd += ["--batch-size", str(args.batch), "--max-steps", str(args.steps + 1), "--epochs", "1000", "--lr", "1e-5", "--warmup", "1"]
    cmd += ["--batchnorm", "train", "--device", "cpu", "--precision", "fp32", "--workers", str(args.workers), "--log-every", "1"]
    cmd += ["--save-every", "100000", "--run-dir", str(run_dir), "--out", str(run_dir / "out.safetensors"), "--format", "json"]
    cmd += ["--compile"] if args.compile else []
    env = {**os.environ, "PYTHONPATH": checkout, "PYTHONDONTWRITEBYTECODE": "1"}
    metrics = run_dir / "metrics.jsonl"
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=run_dir)
    cpu_at_line: list[float] = []  # the process's CPU seconds when each metrics line (one per step) appeared
    while process.poll() is None:
        lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        while len(cpu_at_line) < lines:
            cpu_at_line.append(process_cpu_seconds(process.pid))
        time.sleep(0.05)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, cmd)
    rates = [json.loads(line)["images_per_s"] for line in metrics.read_text().splitlines()]
    # step 1 is warm-up (and compilation)
    return {"step_seconds": [args.batch / r for r in rates[1:]], "step_cpu_seconds": [b - a for a, b in itertools.pairwise(cpu_at_line)]}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc): unlike wall time, barely moved by other load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_peer(args) -> dict:
    import torch

    sys.path.insert(0, args.peer)
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    import src.data as peer_data
    import src.train as peer_train
    from pkgs.openai.clip import Processor
    from pkgs.openai.model import build
    from safetensors.torch import load_file
    from src.scheduler import cosine_scheduler

    try:
        peer_data._augment_text("a photo of a dog")
    except LookupError:  # no WordNet here: captions stay as they are (dataset build time only)
        peer_data._augment_text = lambda caption: caption

    model = build(load_file(args.model), pretrained=False).float()
    processor = Processor(model)
    inmodal = args.method == "cleanclip"
    dataset = peer_data.ImageCaptionDataset(args.csv, "image", "caption", ",", processor, inmodal=inmodal)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True)
    loader.num_samples, loader.num_batches = len(loader) * args.batch, args.steps + 1

    decay = [p for n, p in model.named_parameters() if all(k not in n for k in ("bn", "ln", "bias", "logit_scale"))]
    no_decay = [p for n, p in model.named_parameters() if any(k in n for k in ("bn", "ln", "bias", "logit_scale"))]
    optimizer = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0}, {"params": decay, "weight_decay": 0.1}], lr=1e-5, betas=(0.9, 0.999), eps=1e-8)
    schedule = cosine_scheduler(optimizer, 1e-5, 1, args.steps + 1)
    starts: list[float] = []
    cpu_starts: list[float] = []

    class Enough(Exception):
        pass

    def timed_schedule(step):  # called at the start of every step: our clock, the peer's loop
        starts.append(time.perf_counter())
        cpu_starts.append(time.process_time())
        if len(starts) > args.steps + 1:
            raise Enough  # enough steps: end the epoch here
        schedule(step)

    options = argparse.Namespace(
        inmodal=inmodal, distributed=False, unlearn=False, device="cpu", batch_size=args.batch, clip_weight=1.0, inmodal_weight=1.0, master=False, wandb=False
    )
    options.num_devices, options.rank = 1, 0
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    torch.manual_seed(0)
    with contextlib.suppress(Enough):
        peer_train.train(0, model, {"train": loader}, optimizer, timed_schedule, scaler, options)
    return {
        "step_seconds": [b - a for a, b in itertools.pairwise(starts[1:])],
        "step_cpu_seconds": [b - a for a, b in itertools.pairwise(cpu_starts[1:])],
    }


def child(args) -> None:
    import resource

    result = (run_peer if args.side == "peer" else run_clipsan)(args)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # clipsan runs as a grandchild of ours
    print(json.dumps({**result, "peak_rss_gb": max(own, kids) / 1024**2}))


# --------------------------------------------------------------------------- driver


# A malloc tunable set to what it already is: clipsan then leaves malloc as it is. (Setting
# MALLOC_MMAP_MAX_, even to its default, also fixes glibc's adaptive mmap threshold at 128 KiB.)
GLIBC_MALLOC_DEFAULTS = {"MALLOC_PERTURB_": "0"}


def measure(side: str, args) -> dict:
    name, *switches = side.split("+")
    kind, _, checkout = name.partition("@")
    cmd = [sys.executable, __file__, "--child", kind, "--peer", args.peer, "--method", args.method, "--steps", str(args.steps)]
    cmd += ["--batch", str(args.batch), "--workers", str(args.workers), "--model", args.model, "--csv", args.csv]
    cmd += (["--checkout", checkout] if checkout else []) + (["--compile"] if "compile" in switches else [])
    env = {**os.environ, "PYTHONPATH": str(REPO), **(GLIBC_MALLOC_DEFAULTS if "glibc-malloc" in switches else {})}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    seconds = statistics.median(result["step_seconds"])
    cpu = statistics.median(result["step_cpu_seconds"])
    return {"images_per_s": args.batch / seconds, "cpu_s_per_step": cpu, "peak_rss_gb": result["peak_rss_gb"]}


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True, help="a checkout of CleanCLIP's public code")
    parser.add_argument("--method", choices=("ft", "cleanclip"), default="ft")
    parser.add_argument("--pairs", type=int, default=3, help="alternated (peer, clipsan) measurements")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="data workers, the same on both sides")
    parser.add_argument(
        "--sides",
        default="peer,clipsan",
        help="what to alternate: peer, clipsan[@CHECKOUT][+compile][+glibc-malloc] (first = the ratios' base)",
    )
    parser.add_argument("--arch", default=ARCH, help=f"open_clip architecture (default: {ARCH})")
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkout", help=argparse.SUPPRESS)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "clipsan-peer-bench"), help="where data and model are made (reused)")
    parser.add_argument("--child", choices=("peer", "clipsan"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.side = args.child
        child(args)
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    size = 224 if args.arch != "clipsan-tiny-rn" else 32
    pairs = max(320, args.batch * (args.steps + 1))  # one epoch holds every step: no epoch-end checkpoint inside the timing
    args.csv = str(make_data(work / f"data-{size}-{pairs}", pairs, size=size + size // 7))
    args.model = str(work / f"{args.arch}.safetensors")
    make_model(Path(args.model), args.arch)
    sides = args.sides.split(",")
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"{args.method}, {args.arch}, batch {args.batch}, fp32, CPU, {args.steps} timed steps per run, OMP_NUM_THREADS={threads}")
    print("| round | load before | " + " | ".join(f"{s} images/s | {s} CPU s/step | {s} peak RSS GB" for s in sides) + " |")
    print("|---|---|" + "---|---|---|" * len(sides))
    rounds = []
    for i in range(args.pairs):
        before = load()
        results = [measure(side, args) for side in sides]
        rounds.append(results)
        cells = " | ".join(f"{r['images_per_s']:.3f} | {r['cpu_s_per_step']:.2f} | {r['peak_rss_gb']:.2f}" for r in results)
        print(f"| {i + 1} | {before} | {cells} |", flush=True)
    for j, side in enumerate(sides[1:], start=1):
        ratios = [r[j]["images_per_s"] / r[0]["images_per_s"] for r in rounds]
        rss = [r[j]["peak_rss_gb"] - r[0]["peak_rss_gb"] for r in rounds]
        cpu = [r[0]["cpu_s_per_step"] / r[j]["cpu_s_per_step"] for r in rounds]  # > 1: fewer CPU seconds per step than the base
        print(
            f"{side} / {sides[0]}: images/s median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}), "
            f"steps per CPU second median {statistics.median(cpu):.2f}x (range {min(cpu):.2f}-{max(cpu):.2f}), "
            f"peak RSS {statistics.median(rss):+.2f} GB (range {min(rss):+.2f} to {max(rss):+.2f})"
        )
    print(f"load now {load()}")


if __name__ == "__main__":
    main()
