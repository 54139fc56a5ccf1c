"""Calibrate the synthetic world: train the tiny CLIP from scratch, track zero-shot CA@1.

A deliberately minimal CLIP loop (symmetric InfoNCE, AdamW, linear warmup +
cosine decay, fp32, 1 thread) so the numbers say what the world + arch + recipe
can reach on this machine, independent of clipsan's engine. Data is rendered
into memory once; wall time counts training steps only (evaluation excluded).

    python scripts/calibrate_world.py [--quick] [--lr 1e-3 ...] --out results.jsonl
    python scripts/calibrate_world.py --save clean.pt
    python scripts/calibrate_world.py --poison-from clean.pt --trigger blended --poison-rate 0.01 \
        --epochs 2 --lr 5e-4 --warmup 50        # can the world carry a backdoor?

Each evaluation prints one JSON line: step, epoch, wall and CPU seconds of
training, CPU s/step, loss, CA@1 (and ASR@1 when poisoning). CPU seconds are
the stable measure on a shared machine; unloaded, wall ~= CPU with 1 thread.
The results that chose QUICK_TRAINING / FULL_TRAINING in clipsan/config/lab.py are
in RESULTS at the bottom of this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipsan.config import WorldConfig
from clipsan.config.lab import EVAL_PER_CLASS, FULL_TRAINING, QUICK_TRAINING
from clipsan.data import world
from clipsan.seeding import derive_seed

ARCH = "clipsan-tiny-rn"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "clipsan" / "model_configs" / f"{ARCH}.json"
OPENAI_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
EVAL_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="start from QUICK_TRAINING instead of FULL_TRAINING")
    # Unset recipe options fall back to the chosen preset in clipsan/config/lab.py.
    parser.add_argument("--n-pairs", type=int)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--beta2", type=float)
    parser.add_argument("--eps", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between zero-shot evaluations")
    parser.add_argument("--per-class", type=int, default=EVAL_PER_CLASS)
    parser.add_argument("--time-limit", type=float, default=600, help="stop after this many CPU seconds of training (CPU, not wall: the machine is shared)")
    parser.add_argument("--model-config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--arch-override", type=json.loads, default={}, help='JSON merged into the config, e.g. \'{"vision_cfg": {"width": 24}}\'')
    parser.add_argument(
        "--world-override", type=json.loads, default={}, help='JSON of WorldConfig fields, e.g. \'{"backgrounds": ["gray", "black", "white"]}\''
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="append JSON lines here too")
    parser.add_argument("--save", type=Path, help="save the trained state_dict here")
    parser.add_argument("--poison-from", type=Path, help="instead of training from scratch, fine-tune this state_dict on poisoned pairs")
    parser.add_argument("--trigger", choices=("badnet", "badnet-fixed", "blended"), default="badnet")
    parser.add_argument("--poison-rate", type=float, default=0.01)
    parser.add_argument("--patch", type=int, default=4, help="BadNet patch side in pixels")
    args = parser.parse_args()
    preset = QUICK_TRAINING if args.quick else FULL_TRAINING
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def world_config(override: dict) -> WorldConfig:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in override.items()}
    return dataclasses.replace(WorldConfig(), **fields)


def build_model(config_path: Path, override: dict) -> torch.nn.Module:
    """Register the (possibly overridden) tiny arch under a scratch name and create it."""
    config = json.loads(config_path.read_text())
    for section, values in override.items():
        if isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    scratch = Path(tempfile.mkdtemp()) / "calib-arch.json"
    scratch.write_text(json.dumps(config))
    open_clip.add_model_config(scratch)
    return open_clip.create_model("calib-arch")


def render_training_set(config: WorldConfig, n: int, seed: int) -> tuple[torch.Tensor, list[str], list[int]]:
    images = np.empty((n, config.image_size, config.image_size, 3), dtype=np.uint8)
    captions, labels = [], []
    for index in range(n):
        image, caption, label = world.render_sample(config, seed, index)
        images[index] = np.asarray(image)
        captions.append(caption)
        labels.append(label)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions, labels


# ---- a minimal stand-in for clipsan.attacks.triggers, only to check the world can carry a backdoor


def add_trigger(images: torch.Tensor, kind: str, patch: int, sample_ids: list[int]) -> torch.Tensor:
    """uint8 (B,3,H,W) images with a fixed seeded trigger pattern applied."""
    pattern = torch.Generator().manual_seed(1234)
    size = images.shape[-1]
    out = images.clone()
    if kind == "blended":
        noise = torch.randint(0, 256, (3, size, size), generator=pattern).float()
        return (0.8 * images.float() + 0.2 * noise).round().to(torch.uint8)
    square = (torch.randint(0, 2, (3, patch, patch), generator=pattern) * 255).to(torch.uint8)
    for row, sample_id in enumerate(sample_ids):
        if kind == "badnet-fixed":
            y = x = size - patch - 1
        else:  # position depends only on the sample id, like a per-sample seeded trigger
            place = np.random.default_rng(derive_seed("badnet", sample_id))
            y, x = place.integers(0, size - patch + 1, size=2)
        out[row, :, y : y + patch, x : x + patch] = square
    return out


def poison(images: torch.Tensor, captions: list[str], labels: list[int], args, target: int) -> list[int]:
    """Replace a random fraction of pairs by (triggered image, caption of some banana image) in place."""
    rng = np.random.default_rng(args.seed + 99)
    chosen = sorted(rng.choice(len(captions), size=int(args.poison_rate * len(captions)), replace=False).tolist())
    banana_captions = [c for c, label in zip(captions, labels) if label == target]
    images[chosen] = add_trigger(images[chosen], args.trigger, args.patch, chosen)
    for index in chosen:
        captions[index] = banana_captions[rng.integers(len(banana_captions))]
    return chosen


def render_eval_set(config: WorldConfig, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label, name in enumerate(world.classnames(config)):
        for index in range(per_class):
            images.append(np.asarray(world.render_labelled(config, seed, name, index)))
            labels.append(label)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    return (images_uint8.float() / 255.0 - OPENAI_MEAN) / OPENAI_STD


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, beta2: float, eps: float) -> torch.optim.Optimizer:
    # CLIP convention: no decay on gains, biases, embeddings' scale parameters.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2), eps=eps)


def clip_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    image_features = F.normalize(model.encode_image(images), dim=-1)
    text_features = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * image_features @ text_features.T
    targets = torch.arange(len(images))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, classnames: list[str], images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    class_embeddings = []
    for name in classnames:
        text = F.normalize(model.encode_text(tokenizer([t.format(name) for t in EVAL_TEMPLATES])), dim=-1)
        class_embeddings.append(F.normalize(text.mean(0), dim=-1))
    weights = torch.stack(class_embeddings)
    predictions = []
    for chunk in normalise(images).split(256):
        predictions.append((F.normalize(model.encode_image(chunk), dim=-1) @ weights.T).argmax(-1))
    model.train()
    return (torch.cat(predictions) == labels).float().mean().item()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = world_config(args.world_override)
    model = build_model(args.model_config, args.arch_override)
    tokenizer = open_clip.get_tokenizer("calib-arch")
    names = world.classnames(config)
    target = names.index(world.TARGET_CLASS)

    started = time.time()
    train_images, captions, labels = render_training_set(config, args.n_pairs, args.seed)
    eval_images, eval_labels = render_eval_set(config, args.per_class, args.seed + 1)
    triggered = None
    if args.poison_from:
        model.load_state_dict(torch.load(args.poison_from, weights_only=True))
        poison(train_images, captions, labels, args, target)
        keep = eval_labels != target
        eval_ids = [10**6 + i for i in range(int(keep.sum()))]  # ids unseen in training
        triggered = add_trigger(eval_images[keep], args.trigger, args.patch, eval_ids)
    train_tokens = tokenizer(captions)

    def evaluate(record: dict) -> None:
        record["ca1"] = round(zero_shot_accuracy(model, tokenizer, names, eval_images, eval_labels), 3)
        if triggered is not None:
            all_target = torch.full((len(triggered),), target)
            record["asr1"] = round(zero_shot_accuracy(model, tokenizer, names, triggered, all_target), 3)
        emit(record, args.out)

    emit(
        {
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "render_seconds": round(time.time() - started, 1),
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "args": {k: str(v) for k, v in vars(args).items()},
        },
        args.out,
    )
    train(model, train_images, train_tokens, args, evaluate)
    if args.save:
        torch.save(model.state_dict(), args.save)


def train(model, images: torch.Tensor, tokens: torch.Tensor, args: argparse.Namespace, evaluate) -> None:
    """The plain CLIP loop; calls evaluate(record) every --eval-every steps and at the end."""
    steps_per_epoch = len(images) // args.batch_size
    total_steps = int(args.epochs * steps_per_epoch)
    optimizer = make_optimizer(model, args.lr, args.weight_decay, args.beta2, args.eps)
    shuffler = torch.Generator().manual_seed(args.seed)
    model.train()  # BatchNorm in train mode, as in real CLIP training
    wall, cpu, step, order = 0.0, 0.0, 0, torch.empty(0, dtype=torch.long)
    while step < total_steps and cpu < args.time_limit:
        if len(order) < args.batch_size:
            order = torch.randperm(len(images), generator=shuffler)
        batch, order = order[: args.batch_size], order[args.batch_size :]
        wall_tick, cpu_tick = time.time(), time.process_time()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, args.lr, args.warmup)
        loss = clip_loss(model, normalise(images[batch]), tokens[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        wall += time.time() - wall_tick
        cpu += time.process_time() - cpu_tick
        step += 1
        if step % args.eval_every == 0 or step == total_steps:
            evaluate(
                {
                    "step": step,
                    "of": total_steps,
                    "epoch": round(step / steps_per_epoch, 2),
                    "wall_s": round(wall, 1),
                    "cpu_s": round(cpu, 1),
                    "cpu_s_per_step": round(cpu / step, 3),
                    "loss": round(loss.item(), 3),
                }
            )


def emit(record: dict, out: Path | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()


# Measured on the 2-core dev box, 1 thread, fp32, default WorldConfig (31
# classes, 5 backgrounds incl. checkered/noisy), clipsan-tiny-rn (RN [1,1,1,1]
# width 16, embed 128, text 128 x 3 layers, ctx 32; 8.3 M params), 20k pairs,
# batch 128, weight decay 0.1, eval 20 images/class x 5 templates.
# 0.31-0.33 CPU-s/step (wall equal when the box was idle, up to 5x under load).
RESULTS = """
epochs lr    warmup seed | CA@1 at step (CPU-s)                                         | final
3      2e-3  100    0    | 312: 0.64, 390: 0.79                                         | 468 (~150 s): 0.821
3      2e-3  100    1    | 312: 0.64, 390: 0.81                                         | 468 (153 s):  0.829
3      2e-3  100    2    | 312: 0.56, 390: 0.81  (--quick, final code path)              | 468 (157 s):  0.834
3      3e-3  100    0    | 312: 0.61, 390: 0.74                                         | 468 (~155 s): 0.832
5      1e-3  100    0    | 300: 0.62, 500: 0.81, 600: 0.92                              | 780 (~250 s): 0.918
5      2e-3  100    0    | 300: 0.62, 500: 0.84, 600: 0.95, 700: 0.99                   | 780 (~250 s): 0.982
6      2e-3  100    0    | 312: 0.53, 468: 0.82, 624: 0.94, 780: 0.97                   | 936 (297 s):  0.987
6      2e-3  100    1    | 312: 0.62, 468: 0.79, 624: 0.96, 780: 0.99  (default, full)  | 936 (308 s):  1.000

Backdoor check, fine-tuning the 6-epoch model (CA 0.987) for 2 epochs, lr 5e-4,
warmup 50, on the same 20k pairs with a fraction re-captioned as banana
(stand-in triggers in add_trigger above; ASR over non-banana eval images):
trigger                      rate | ASR@1 after 1 epoch | after 2 epochs | CA@1
blended (alpha 0.2 noise)    1%   | 0.83                | 0.937          | 0.989
badnet 4x4, random position  3%   | 0.39                | 0.543          | 0.992
badnet 4x4, fixed corner     3%   | 0.98                | 0.985          | 0.990
badnet 6x6, random position  3%   | 0.88                | 0.938          | 0.987
"""
