"""How long reading a checkpoint takes, per layout, and how fast a foreign file is refused.

1. Refusal of a safetensors file holding one random tensor (issue #15: it took 62 s when
   every open_clip config was tried), and of one with a CLIP-like name but no CLIP shapes.
2. `load_model` of a ViT-B/32-shaped model (random init) as clipsan safetensors, as a
   transformers folder and as an open_clip folder (median of --repeats, alternated).

    OMP_NUM_THREADS=1 python benchmarks/checkpoint_load.py [--arch ViT-B-32-quickgelu] [--repeats 3]

Prints one JSON object per measurement; record the figures in BENCHMARKS.md with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def refusal(path: Path) -> float:
    from clipsan.checkpoints import load_model
    from clipsan.errors import UserError

    def attempt():
        try:
            load_model(str(path))
        except UserError:
            return
        raise AssertionError(f"{path} was not refused")

    return seconds(attempt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32-quickgelu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from clipsan.checkpoints import load_model, save_model
    from clipsan.checkpoints.output import OutputPlan, write_output
    from clipsan.models import create_model

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_file({"x": torch.randn(64, 64)}, str(root / "random.safetensors"))
        save_file({"visual.x": torch.randn(64, 64)}, str(root / "visual-x.safetensors"))
        for name in ("random.safetensors", "visual-x.safetensors"):
            print(json.dumps({"what": "refusal", "file": name, "seconds": round(refusal(root / name), 4), "load": load}))
        torch.manual_seed(0)
        model = create_model(args.arch)
        files = {
            "safetensors": save_model(model, root / "m.safetensors"),
            "transformers": write_output(OutputPlan("hf", root / "hf"), model, None, {}),
            "open_clip": write_output(OutputPlan("open_clip", root / "oc"), model, None, {}),
        }
        del model
        times: dict[str, list[float]] = {name: [] for name in files}
        for _ in range(args.repeats):
            for name, path in files.items():
                times[name].append(seconds(lambda path=path: load_model(str(path))))
        for name, values in times.items():
            print(json.dumps({"what": "load_model", "layout": name, "arch": args.arch, "median_s": round(statistics.median(values), 3), "load": load}))


if __name__ == "__main__":
    main()
