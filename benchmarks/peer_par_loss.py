"""clipsan's PAR loss against PAR's public code (``losses.py``), on the same embeddings.

    python benchmarks/peer_par_loss.py --peer PATH/TO/PerturbAndRecover [--cases 20] [--batch 64] [--dim 512]

PATH is a checkout of PAR's public code (github: nmndeep/PerturbAndRecover); its ``losses.py`` is
imported from there, never copied. The peer's ``CLIPLoss`` all-gathers with torch.distributed, so the
script joins a one-process gloo group. Each case draws raw (unnormalised) embeddings for the model
being cleaned (augmented image, caption) and for the frozen input model (the same two), and a logit
scale; some cases put the frozen embeddings far away, so that a term passes τ and is zeroed. Both
sides get the same numbers: the peer normalises inside its loss, clipsan's encoders hand back unit
vectors (so clipsan's side normalises first, as ``ClipModel.encode_*`` does). Prints the largest
absolute difference per term and exits 1 if any exceeds --tolerance (default 1e-5).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipsan.config import PARConfig
from clipsan.recipes.par import par_terms


def peer_loss(peer: Path, tau: float):
    sys.path.insert(0, str(peer))
    import losses  # the peer's losses.py

    return losses.CLIPLoss(tau)


def case(seed: int, batch: int, dim: int, far: bool) -> dict:
    g = torch.Generator().manual_seed(seed)
    names = ("image", "text", "frozen_image", "frozen_text")
    raw = {name: torch.randn(batch, dim, generator=g) * (1 + 3 * torch.rand(batch, 1, generator=g)) for name in names}
    if far:  # the frozen model's embeddings near the opposite of the model's: squared distances near 4 > tau
        raw["frozen_image"] = -raw["image"] + 0.1 * raw["frozen_image"]
    return {**raw, "scale": float(torch.empty(()).uniform_(1.0, 100.0, generator=g))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", type=Path, required=True, help="checkout of github.com/nmndeep/PerturbAndRecover")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    tau = PARConfig().threshold
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1)
        criterion = peer_loss(args.peer.resolve(), tau)
        worst = {"total": 0.0, "clip": 0.0, "image": 0.0, "text": 0.0}
        zeroed = 0
        for i in range(args.cases):
            c = case(i, args.batch, args.dim, far=i % 2 == 1)
            # The peer's names: "clean_image_embed" is the cleaned model on the augmented image, "aug_*" the frozen model.
            outputs = {"clean_image_embed": c["image"], "text_embed": c["text"], "aug_image_embed": c["frozen_image"], "aug_text_embed": c["frozen_text"]}
            theirs = criterion({**outputs, "logit_scale": c["scale"]})
            unit = {k: F.normalize(v, dim=-1) for k, v in c.items() if k != "scale"}
            ours = par_terms(unit["image"], unit["text"], unit["frozen_image"], unit["frozen_text"], torch.tensor(c["scale"]), tau)
            pairs = {
                "total": (theirs["total-loss"], sum(ours.values())),
                "clip": (theirs["clip-loss"], ours["clip"]),
                "image": (-0.5 * theirs["img-loss"], ours["perturb_image"]),
                "text": (-0.5 * theirs["text-loss"], ours["perturb_text"]),
            }
            for name, (a, b) in pairs.items():
                worst[name] = max(worst[name], abs(float(a) - float(b)))
            zeroed += float(theirs["img-loss"]) == 0.0
        dist.destroy_process_group()
    print(f"{args.cases} cases, batch {args.batch}, dim {args.dim}, tau {tau}; image term past tau (zeroed) in {zeroed} cases")
    for name, value in worst.items():
        print(f"  largest |peer - clipsan| {name:<5} {value:.3g}")
    return 1 if max(worst.values()) > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
