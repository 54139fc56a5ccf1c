"""Step time of ft, cleanclip and cleanerclip on the same batch (CPU, fp32), and their data cost.

Step = recipe.loss_terms + backward + AdamW step + logit-scale clamp, on a batch
built by the real data path (views, tokenisation, collate) from synthetic-world
pairs. Recipes are timed in interleaved rounds and the median is reported;
the ratio uses this process's CPU time (``time.process_time``), which other
processes on a shared machine disturb far less than wall time (both shown).

Data cost = one ``RecipeSamples[(epoch, index)]`` (resize, views, tokenisation)
per sample, images already decoded. CleanerCLIP selects K of N pairs per epoch
(default 1000 of 250K, as in the paper's CC500K-scale runs); its batch holds
max(1, round(B·K/N)) selected pairs so the p-n path always runs, and the data
column mixes selected and unselected samples at the rate K/N.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/recipe_step_time.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clipsan.engine.loader import RecipeSamples, collate
from clipsan.engine.optim import build_optimizer
from clipsan.engine.runtime import setup_runtime
from clipsan.models import create_model, tokenizer_for
from clipsan.recipes.cleanclip import CleanCLIP
from clipsan.recipes.cleanerclip import CleanerCLIP, epoch_subset
from clipsan.recipes.config import CleanerCLIPConfig
from clipsan.recipes.ft import FineTune
from clipsan.world import WorldConfig, render_sample

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


def batch_indices(batch: int, selected: frozenset[int], n_selected: int) -> list[int]:
    chosen = sorted(selected)[:n_selected]
    others = [i for i in range(batch + n_selected) if i not in selected][: batch - len(chosen)]
    return chosen + others


def frozen_bn_train(model) -> None:
    # As the engine trains by default: BatchNorm layers use running statistics.
    model.train()
    for layer in model.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.eval()


def time_steps(model, recipes: dict, batches: dict, rt, rounds: int) -> dict[str, float]:
    # One optimizer for all: its cost does not depend on the recipe, and RN50's AdamW state is ~0.8 GB.
    optimizer = build_optimizer(model, 1e-9)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in recipes}
    for round_ in range(rounds + 1):  # round 0 warms up (allocations, optimizer state)
        for name, recipe in recipes.items():
            wall, cpu = time.perf_counter(), time.process_time()
            terms = recipe.loss_terms(model, batches[name], rt)
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


def bench(arch: str, batch: int, rounds: int, k: int, n: int, view_samples: int) -> list[dict]:
    rt = setup_runtime("cpu", "fp32")
    torch.manual_seed(0)
    model = create_model(arch)
    tokenize = tokenizer_for(model.arch, model.context_length)
    pairs = WorldPairs(n)
    recipes = {"ft": FineTune(), "cleanclip": CleanCLIP(), "cleanerclip": CleanerCLIP(CleanerCLIPConfig(subcaptions_per_epoch=k))}
    for recipe in recipes.values():
        recipe.prepare(pairs)
    selected = epoch_subset(n, k, SEED, EPOCH)
    n_selected = max(1, round(batch * k / n))
    indices = batch_indices(batch, selected, n_selected)
    samples = {name: RecipeSamples(pairs, r, model.image_size, tokenize, SEED) for name, r in recipes.items()}
    batches = {name: collate([s[(EPOCH, i)] for i in indices]) for name, s in samples.items()}

    frozen_bn_train(model)
    steps = time_steps(model, recipes, batches, rt, rounds)

    # Data cost: unselected samples, and (cleanerclip) selected ones with a cold parse cache.
    plain = [i for i in range(batch + n_selected, batch + n_selected + 4 * view_samples) if i not in selected][:view_samples]
    fresh_selected = sorted(selected)[n_selected : n_selected + max(4, view_samples // 4)]
    rows = []
    for name in recipes:
        per_sample = time_views(samples[name], plain)
        if name == "cleanerclip":
            per_selected = time_views(samples[name], fresh_selected)
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
                "selected_ms": per_selected * 1e3 if name == "cleanerclip" else None,
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny arch only")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds for the tiny arch (RN50: 2)")
    p.add_argument("--k", type=int, default=1000, help="cleanerclip --subcaptions-per-epoch")
    p.add_argument("--n", type=int, default=250_000, help="dataset size the K is drawn from")
    args = p.parse_args()

    rows = bench("clipsan-tiny-rn", 128, args.rounds, args.k, args.n, view_samples=128)
    if not args.quick:
        rows += bench("RN50", 16, 2, args.k, args.n, view_samples=32)

    print(f"CPU fp32, torch threads {torch.get_num_threads()}, K/N = {args.k}/{args.n}\n")
    print("| arch | batch | recipe | step CPU s | step wall s | × ft (CPU) | views ms/sample | data s/step, 2 workers | workers keep up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['batch']} | {r['recipe']} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | {r['ratio']:.2f} | "
            f"{r['views_ms']:.2f} | {r['data_s']:.3f} | {'yes' if r['keeps_up'] else 'NO'} |"
        )
    for r in rows:
        if r["selected_ms"] is not None:
            print(f"\n{r['arch']}: a selected cleanerclip sample (sub-captions, cold parse) costs {r['selected_ms']:.1f} ms")


if __name__ == "__main__":
    main()
