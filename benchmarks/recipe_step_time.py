"""Step time of ft, cleanclip and cleanerclip on the same batch (CPU, fp32), and their data cost.

Step = recipe.loss_terms + backward + AdamW step + logit-scale clamp, on a batch
built by the real data path (views, tokenisation, collate) from synthetic-world
pairs. Recipes are timed in interleaved rounds and the median is reported;
the ratio uses this process's CPU time (``time.process_time``), which other
processes on a shared machine disturb far less than wall time (both shown).

CleanerCLIP trains its K selected pairs of an epoch in batches of their own
(``clipsan.recipes.cleanerclip.epoch_order``): ceil(K/B) of the epoch's N//B steps
are "selected" batches (B pairs with sub-captions: 2B more caption encodings and
L_p-n), the others plain CleanCLIP batches (L_p-n = 0). Both kinds are timed, and the
epoch-average cost against cleanclip is reported for each K/N in ``--kn``.

Data cost = one ``RecipeSamples[(epoch, index)]`` (resize, views, tokenisation)
per sample, images already decoded; for cleanerclip, a selected sample (sub-captions
parsed cold) is timed apart and mixed in at the rate K/N.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/recipe_step_time.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from clipsan.config.recipes import CleanerCLIPConfig
from clipsan.data.world import WorldConfig, render_sample
from clipsan.engine.loader import RecipeSamples, collate
from clipsan.engine.optim import build_optimizer
from clipsan.engine.runtime import setup_runtime
from clipsan.models import create_model, tokenizer_for
from clipsan.recipes.cleanclip import CleanCLIP
from clipsan.recipes.cleanerclip import CleanerCLIP, epoch_subset
from clipsan.recipes.ft import FineTune

SEED, EPOCH = 0, 0


class WorldPairs:
    """A caption dataset of N synthetic-world pairs; images rendered on first use and kept."""

    def __init__(self, n: int) -> None:
        self.n, self._cache = n, {}

    def __len__(self) -> int:
        return self.n

    def load(self, index: int):
        if index not in self._cache:
            image, caption, _ = render_sample(WorldConfig(), SEED, index)
            self._cache[index] = (image, caption)
        return self._cache[index]

    def caption(self, index: int) -> str:
        return self.load(index)[1]


def frozen_bn_train(model) -> None:
    # As the engine trains by default: BatchNorm layers use running statistics.
    model.train()
    for layer in model.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.eval()


def time_steps(model, steps: dict, rt, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (CPU s, wall s) of one optimizer step for each name -> (recipe, batch)."""
    # One optimizer for all: its cost does not depend on the recipe, and RN50's AdamW state is ~0.8 GB.
    optimizer = build_optimizer(model, 1e-9)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for round_ in range(rounds + 1):  # round 0 warms up (allocations, optimizer state)
        for name, (recipe, batch) in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            terms = recipe.loss_terms(model, batch, rt)
            optimizer.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            optimizer.step()
            recipe.after_step(model)
            if round_:
                times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    return {name: tuple(statistics.median(column) for column in zip(*t)) for name, t in times.items()}


def time_views(samples: RecipeSamples, indices: list[int]) -> float:
    start = time.perf_counter()
    for index in indices:
        samples[(EPOCH, index)]
    return (time.perf_counter() - start) / len(indices)


def bench(arch: str, batch: int, rounds: int, k: int, n: int, view_samples: int) -> tuple[list[dict], dict]:
    rt = setup_runtime("cpu", "fp32")
    torch.manual_seed(0)
    model = create_model(arch)
    tokenize = tokenizer_for(model.arch, model.context_length)
    pairs = WorldPairs(n)
    recipes = {"ft": FineTune(), "cleanclip": CleanCLIP(), "cleanerclip": CleanerCLIP(CleanerCLIPConfig(subcaptions_per_epoch=k))}
    for recipe in recipes.values():
        recipe.prepare(pairs)
    selected = sorted(epoch_subset(n, k, SEED, EPOCH))
    ordinary = [i for i in range(4 * batch) if i not in set(selected)][:batch]
    samples = {name: RecipeSamples(pairs, r, model.image_size, tokenize, SEED) for name, r in recipes.items()}

    def batch_of(name: str, indices: list[int]) -> dict:
        return collate([samples[name][(EPOCH, i)] for i in indices])

    steps_timed = {name: (recipes[name], batch_of(name, ordinary)) for name in recipes}
    steps_timed["cleanerclip, selected batch"] = (recipes["cleanerclip"], batch_of("cleanerclip", selected[:batch]))
    frozen_bn_train(model)
    steps = time_steps(model, steps_timed, rt, rounds)

    # Data cost: unselected samples, and (cleanerclip) selected ones with a cold parse cache.
    plain = [i for i in range(4 * batch, 12 * batch + 4 * view_samples) if i not in set(selected)][:view_samples]
    fresh_selected = selected[batch : batch + max(4, view_samples // 4)]
    rows = []
    for name in steps:
        recipe_name = name.split(",")[0]
        per_sample = time_views(samples[recipe_name], plain)
        per_selected = None
        if recipe_name == "cleanerclip":
            per_selected = time_views(samples[recipe_name], fresh_selected)
            per_sample = per_sample * (1 - k / n) + per_selected * (k / n)
        data_step = per_sample * batch / 2  # two loader workers, perfectly parallel
        rows.append(
            {
                "arch": arch,
                "batch": batch,
                "recipe": name,
                "cpu_s": steps[name][0],
                "wall_s": steps[name][1],
                "ratio": steps[name][0] / steps["ft"][0],
                "views_ms": per_sample * 1e3,
                "data_s": data_step,
                "keeps_up": data_step <= steps[name][0],
                "selected_ms": per_selected * 1e3 if per_selected is not None else None,
            }
        )
    return rows, {name: t[0] for name, t in steps.items()}


def epoch_average(cpu: dict, batch: int, k: int, n: int) -> tuple[int, int, float]:
    """(selected batches, steps) of an epoch at K/N, and cleanerclip's epoch-average step over cleanclip's."""
    per_epoch, own = n // batch, math.ceil(k / batch)
    average = (own * cpu["cleanerclip, selected batch"] + (per_epoch - own) * cpu["cleanerclip"]) / per_epoch
    return own, per_epoch, average / cpu["cleanclip"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny arch only")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds for the tiny arch (RN50: 2)")
    p.add_argument("--k", type=int, default=1000, help="cleanerclip --subcaptions-per-epoch for the data column")
    p.add_argument("--n", type=int, default=250_000, help="dataset size the K is drawn from")
    p.add_argument("--kn", nargs="+", default=["1000/250000", "3000/500000"], help="K/N pairs for the epoch-average cost")
    args = p.parse_args()

    runs = [("clipsan-tiny-rn", 128, args.rounds, 128)] + ([] if args.quick else [("RN50", 16, 2, 32)])
    results = [(arch, b, *bench(arch, b, rounds, args.k, args.n, view_samples=v)) for arch, b, rounds, v in runs]

    print(f"CPU fp32, torch threads {torch.get_num_threads()}, data column at K/N = {args.k}/{args.n}\n")
    print("| arch | batch | recipe | step CPU s | step wall s | × ft (CPU) | views ms/sample | data s/step, 2 workers | workers keep up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _, _, rows, _ in results:
        for r in rows:
            print(
                f"| {r['arch']} | {r['batch']} | {r['recipe']} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | {r['ratio']:.2f} | "
                f"{r['views_ms']:.2f} | {r['data_s']:.3f} | {'yes' if r['keeps_up'] else 'NO'} |"
            )
    print("\n| arch | batch | K/N | selected batches / steps per epoch | cleanerclip epoch-average step / cleanclip step |")
    print("|---|---|---|---|---|")
    for arch, b, _, cpu in results:
        for kn in args.kn:
            k, n = map(int, kn.split("/"))
            own, per_epoch, ratio = epoch_average(cpu, b, k, n)
            print(f"| {arch} | {b} | {k}/{n} | {own} / {per_epoch} | {ratio:.4f} ({100 * (ratio - 1):+.2f}%) |")
    for _, _, rows, _ in results:
        for r in rows:
            if r["selected_ms"] is not None and r["recipe"] == "cleanerclip":
                print(f"\n{r['arch']}: a selected cleanerclip sample (sub-captions, cold parse) costs {r['selected_ms']:.1f} ms")


if __name__ == "__main__":
    main()
