"""Check the sign of ABD's backdoor loss L_bd on a lab's victims (docs/abd.md records the result).

ABD adds L_bd to AdvCLIP's generator objective without saying which way it pulls
(REFERENCE.md, "the reading to implement"). clipsan's reading: the generator is rewarded
(-w * L_bd) for patches on which the victim's feature departs from the clean reference's.
If that is right, patches crafted with +w make the victim call more patched images the
backdoor target (the paper's Fig. 2 / Table III effect) than patches crafted without
L_bd (0) or with the opposite sign (-w).

For every victim, craft seed and weight in (+w, 0, -w) this crafts a patch exactly as the
lab's ABD stage does (same data, steps and batch), then measures the victim's top-1 target
rate on patched non-target world images (``clipsan.lab.probes.adv_target_rate``), and the
clean model's on the same patch (a patch that merely looks like a banana would raise both).

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/check_bd_sign.py --lab /work/labs/full-main \\
        --attacks badnet blended badclip sig wanet label-consistent --seeds 0 1 2 --out bd-sign/
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from clipsan.checkpoints import load_model
from clipsan.config.recipes import CraftConfig
from clipsan.data.captions import open_caption_dataset
from clipsan.engine.rundir import RunDir
from clipsan.engine.runtime import setup_runtime
from clipsan.lab.probes import adv_target_rate
from clipsan.recipes.abd.crafting import craft_generator, craft_training
from clipsan.recipes.abd.patch import load_adv_patch

PROBE_SEED = 7  # world probe images, distinct from the lab's eval set (seed + 1)


def craft_rates(lab: Path, attack: str, weight: float, seed: int, steps: int, out: Path) -> dict:
    victim_path, clean_path = lab / "models" / f"victim-{attack}.safetensors", lab / "models" / "clean.safetensors"
    name = f"{attack}-w{weight:+g}-seed{seed}"
    generator = out / f"{name}.safetensors"
    if not generator.is_file():  # re-running the script only crafts what is missing
        settings = CraftConfig(epochs=1, batch_size=16, max_steps=steps)  # the lab's craft budget
        rt = setup_runtime("cpu", "fp32")
        suspect, reference = load_model(str(victim_path)), load_model(str(clean_path))
        captions = open_caption_dataset(lab / "world" / "defense")
        cfg = craft_training(settings, seed, workers=0, save_every=10**6, log_every=10**6, progress=False)
        with RunDir(out / "runs" / name, is_main=True).open(resume=False) as run:
            craft_generator(run, suspect, reference, captions, settings, cfg, rt, resume=False, out=generator, command="check_bd_sign", bd_weight=weight)
    patch = load_adv_patch(generator, 32)
    return {
        "attack": attack,
        "weight": weight,
        "seed": seed,
        "victim_target_rate": adv_target_rate(victim_path, patch, PROBE_SEED),
        "clean_target_rate": adv_target_rate(clean_path, patch, PROBE_SEED),
    }


def _summary(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.1f} ({100 * min(values):.1f}–{100 * max(values):.1f})"


def table(rows: list[dict], weight: float) -> str:
    columns = [f"{who}, L_bd at {w}" for who in ("victim", "clean model") for w in (f"+{weight:g}", "0", f"−{weight:g}")]
    lines = ["| attack | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for attack in dict.fromkeys(r["attack"] for r in rows):
        cells = []
        for key in ("victim_target_rate", "clean_target_rate"):
            for w in (weight, 0.0, -weight):
                cells.append(_summary([r[key] for r in rows if r["attack"] == attack and r["weight"] == w]))
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", type=Path, required=True, help="a finished lab folder (models/victim-*.safetensors, models/clean.safetensors, world/)")
    p.add_argument("--attacks", nargs="+", default=["badnet", "blended", "badclip"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="craft seeds")
    p.add_argument("--weight", type=float, default=CraftConfig.bd_weight, help="|w| of L_bd")
    p.add_argument("--steps", type=int, default=100, help="craft steps (the lab's ABD stage: 100)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for attack in args.attacks:
        for seed in args.seeds:
            for w in (args.weight, 0.0, -args.weight):
                rows.append(craft_rates(args.lab, attack, w, seed, args.steps, args.out))
                print(json.dumps(rows[-1]), flush=True)
    (args.out / "bd_sign.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nTop-1 target rate on patched non-target images, % (mean and range over craft seeds {args.seeds}, {args.steps} craft steps):\n")
    print(table(rows, args.weight))


if __name__ == "__main__":
    main()
