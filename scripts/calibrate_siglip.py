"""Calibrate a tiny SigLIP-family arch on the synthetic world: train from scratch, track zero-shot CA@1.

calibrate_world.py's minimal loop (AdamW, linear warmup + cosine, fp32, 1 thread, data rendered
into memory once, wall and CPU time of training steps only) with what the SigLIP lab changes:
clipsan's model (pixel normalisation 0.5/0.5), the lab's word-level tokenizer, clipsan's sigmoid
loss with the trained logit bias (``--loss softmax`` runs CLIP's loss on the same arch, to tell
the loss from the tower), and the lab's 4 prompt templates for zero-shot evaluation.

    python scripts/calibrate_siglip.py --config clipsan/models/model_configs/clipsan-tiny-siglip.json \
        --override '{"vision_cfg": {"timm_model_name": "clipsan_siglip_vit_p4_i32_w64_d2_h2_m256_gelutanh_eps1e-06"}}' \
        --epochs 4 --lr 2e-3 --out probes.jsonl

One JSON line per evaluation: step, epoch, wall and CPU seconds, CPU s/step, loss, t, bias, CA@1.
The probes that chose the SigLIP lab's arch and recipe: docs/siglip.md, "The SigLIP lab".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibrate_world import emit, lr_at, make_optimizer, render_eval_set, render_training_set

from clipsan.checkpoints.tokenizer_files import siglip_tokenizer
from clipsan.config import WorldConfig
from clipsan.config.lab import EVAL_PER_CLASS, QUICK_TRAINING
from clipsan.data import world
from clipsan.lab.plan import LAB_TEMPLATES
from clipsan.lab.world_tokenizer import write_world_tokenizer
from clipsan.models import create_model
from clipsan.models.registry import register_model_config
from clipsan.recipes.losses import contrastive_loss, sigmoid_loss


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="an open_clip model config (JSON)")
    parser.add_argument("--override", type=json.loads, default={}, help="JSON merged into the config's sections")
    parser.add_argument("--loss", choices=("sigmoid", "softmax"), default="sigmoid")
    parser.add_argument("--init-scale", type=float, help="initial t (default: the config's, open_clip's 1/0.07 or SigLIP's 10)")
    parser.add_argument("--init-bias", type=float, help="initial logit bias (default: the config's init_logit_bias)")
    for key, value in QUICK_TRAINING.items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=156)
    parser.add_argument("--per-class", type=int, default=EVAL_PER_CLASS)
    parser.add_argument("--time-limit", type=float, default=900, help="stop after this many CPU seconds of training")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="append JSON lines here too")
    return parser.parse_args()


def build_model(args: argparse.Namespace):
    config = json.loads(args.config.read_text())
    for section, values in args.override.items():
        if isinstance(values, dict):
            config[section] = {**config.get(section, {}), **values}
        else:
            config[section] = values
    torch.manual_seed(args.seed)
    model = create_model(register_model_config("calib-siglip", config))
    with torch.no_grad():
        if args.init_scale is not None:
            model.logit_scale.fill_(math.log(args.init_scale))
        if args.init_bias is not None and model.logit_bias is not None:
            model.logit_bias.fill_(args.init_bias)
    model.file_tokenizer = siglip_tokenizer(write_world_tokenizer(Path(tempfile.mkdtemp()), LAB_TEMPLATES), model.context_length)
    return model, config


@torch.no_grad()
def zero_shot_accuracy(model, classnames: list[str], images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    weights = []
    for name in classnames:
        text = model.encode_text(model.tokenize([t.format(name) for t in LAB_TEMPLATES]))
        weights.append(F.normalize(text.mean(0), dim=-1))
    weights = torch.stack(weights)
    predictions = [(model.encode_image(chunk.float() / 255.0) @ weights.T).argmax(-1) for chunk in images.split(256)]
    model.train()
    return (torch.cat(predictions) == labels).float().mean().item()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, config = build_model(args)
    world_config = WorldConfig()
    names = world.classnames(world_config)
    started = time.time()
    images, captions, _ = render_training_set(world_config, args.n_pairs, args.seed)
    eval_images, eval_labels = render_eval_set(world_config, args.per_class, args.seed + 1)
    tokens = model.tokenize(captions)
    emit(
        {
            "render_seconds": round(time.time() - started, 1),
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "args": {k: str(v) for k, v in vars(args).items()},
            "config": config,
        },
        args.out,
    )
    steps_per_epoch = len(images) // args.batch_size
    total = int(args.epochs * steps_per_epoch)
    optimizer = make_optimizer(model, args.lr, args.weight_decay, args.beta2, args.eps)
    shuffler = torch.Generator().manual_seed(args.seed)
    model.train()
    wall = cpu = 0.0
    step, order = 0, torch.empty(0, dtype=torch.long)
    while step < total and cpu < args.time_limit:
        if len(order) < args.batch_size:
            order = torch.randperm(len(images), generator=shuffler)
        batch, order = order[: args.batch_size], order[args.batch_size :]
        wall_tick, cpu_tick = time.time(), time.process_time()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, args.lr, args.warmup)
        image_features, text_features = model(images[batch].float() / 255.0, tokens[batch])
        scale = model.logit_scale.exp()
        if args.loss == "sigmoid":
            loss = sigmoid_loss(image_features, text_features, scale, model.logit_bias)
        else:
            loss = contrastive_loss(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # clipsan's rule: a sigmoid model's t is kept >= 1, CLIP's within [1, 100]
            model.logit_scale.clamp_(0, None if args.loss == "sigmoid" else math.log(100))
        wall += time.time() - wall_tick
        cpu += time.process_time() - cpu_tick
        step += 1
        if step % args.eval_every == 0 or step == total:
            record = {"step": step, "of": total, "epoch": round(step / steps_per_epoch, 2), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
            record |= {"cpu_s_per_step": round(cpu / step, 3), "loss": round(loss.item(), 3), "t": round(model.logit_scale.exp().item(), 2)}
            if model.logit_bias is not None:
                record["bias"] = round(model.logit_bias.item(), 2)
            record["ca1"] = round(zero_shot_accuracy(model, names, eval_images, eval_labels), 3)
            emit(record, args.out)


if __name__ == "__main__":
    main()
