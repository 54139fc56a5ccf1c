"""AdvCLIP's universal adversarial patch, with ABD's backdoor loss.

Pieces (all plain torch; the training itself runs on the engine, see
``clipsan.recipes.abd``):

- ``PatchBox``: where the patch sits: a square of ``area`` of the image,
  bottom-right, 14 px from the corner at 224 px (scaled with the input side).
- ``PatchGenerator``: DCGAN generator from a fixed noise batch (16 x 100) to 16
  full-size images, mixed by a 1x1 convolution into one universal pattern in
  [0, 1]. Its upsampling stack ends at the model's input size (32 px for the
  tiny lab model, 224 for RN50) instead of AdvCLIP's fixed 224.
- ``Discriminator``: DCGAN critic on whole images (one logit per image).
- Losses: cosine InfoNCE, AdvCLIP's topology term (its ``umap`` loss), and ABD's L_bd.

Sign convention (AdvCLIP's): the generator *minimises* its objective, and the
adversarial terms enter it negated, so minimising them pushes the adversarial
features away from what they should match. L_bd follows the same convention
(see ``backdoor_loss``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipsan.config.recipes import CraftConfig, default_gan_width
from clipsan.recipes.losses import info_nce

NOISE_BATCH = 16
NOISE_DIM = 100
TAU = 0.1
# AdvCLIP's weights: G = gan + 10 * adv + mse + 1 * topo, and inside adv/topo the
# text pairing weighs 5 times the image pairing.
ADV_WEIGHT = 10.0
TOPO_WEIGHT = 1.0
TEXT_PAIRING_WEIGHT = 5.0
CORNER_MARGIN_AT_224 = 14
DISCRIMINATOR_CLIP = 0.01


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class PatchBox:
    """A square patch: top-left (x, y) and side, in pixels of an image_size x image_size input."""

    x: int
    y: int
    side: int
    image_size: int

    @classmethod
    def for_image(cls, image_size: int, area: float = CraftConfig.patch_area) -> PatchBox:
        if not 0.0 < area < 1.0:
            raise ValueError(f"patch area must be a fraction in (0, 1), got {area}")
        side = max(1, int(math.sqrt(area * image_size * image_size)))  # AdvCLIP: int(sqrt(0.03 * 224^2)) = 38
        margin = int(CORNER_MARGIN_AT_224 * image_size / 224 + 0.5)
        corner = max(0, image_size - margin - side)
        return cls(corner, corner, side, image_size)

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        return images[..., self.y : self.y + self.side, self.x : self.x + self.side]


def paste(images01: torch.Tensor, patch: torch.Tensor, box: PatchBox) -> torch.Tensor:
    """x' = m * patch + (1 - m) * x for a batch (B, 3, S, S); differentiable in ``patch``, input untouched."""
    if images01.shape[-1] != box.image_size or images01.shape[-2] != box.image_size:
        raise ValueError(f"patch made for {box.image_size} px images, got {tuple(images01.shape[-2:])}")
    out = images01.clone()
    out[..., box.y : box.y + box.side, box.x : box.x + box.side] = patch.to(out.dtype)
    return out


# --------------------------------------------------------------------------- networks


def _dcgan_init(module: nn.Module, generator: torch.Generator) -> None:
    # DCGAN's N(0, 0.02) weights (norm gains N(1, 0.02)), drawn from our own generator: reproducible.
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.02)
                if layer.bias is not None:
                    layer.bias.zero_()
        elif isinstance(layer, nn.BatchNorm2d):
            with torch.no_grad():
                layer.weight.copy_(1.0 + torch.randn(layer.weight.shape, generator=generator) * 0.02)
                layer.bias.zero_()


def _norm(channels: int) -> nn.BatchNorm2d:
    # Batch statistics always (no running averages): the generator only ever sees its one
    # fixed noise batch, so train and eval mode give the same pattern, and the engine's
    # "frozen BatchNorm" setting cannot change the GAN.
    return nn.BatchNorm2d(channels, track_running_stats=False)


class PatchGenerator(nn.Module):
    """Fixed noise -> one universal (3, S, S) pattern in [0, 1]; the patch is its crop at the box."""

    def __init__(self, image_size: int, width: int | None = None, seed: int = 0):
        super().__init__()
        width = width or default_gan_width(image_size)
        self.image_size, self.width = int(image_size), int(width)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("noise", torch.randn((NOISE_BATCH, NOISE_DIM, 1, 1), generator=g))
        channels = [8 * width, 4 * width, 2 * width, width]
        layers: list[nn.Module] = [nn.ConvTranspose2d(NOISE_DIM, channels[0], 4, 1, 0, bias=False), _norm(channels[0]), nn.ReLU(True)]
        size, c = 4, channels[0]
        for nxt in channels[1:]:  # doubling stages up to 32 px, or fewer for smaller inputs
            if size * 2 > min(32, image_size):
                break
            layers += [nn.ConvTranspose2d(c, nxt, 4, 2, 1, bias=False), _norm(nxt), nn.ReLU(True)]
            size, c = size * 2, nxt
        factor = math.ceil(image_size / size)  # AdvCLIP: 32 -> 224 in one stride-7 step
        if factor == 1:
            layers.append(nn.ConvTranspose2d(c, 3, 3, 1, 1))
        else:
            layers.append(nn.ConvTranspose2d(c, 3, factor, factor, 0))
        self.body = nn.Sequential(*layers)
        self.mix = nn.Conv2d(NOISE_BATCH, 1, 1)  # the 16 outputs -> one pattern, per colour channel
        _dcgan_init(self, g)

    def forward(self) -> torch.Tensor:
        out = self.body(self.noise)[..., : self.image_size, : self.image_size]  # (16, 3, S, S)
        mixed = self.mix(out.transpose(0, 1))  # (3, 1, S, S)
        return (torch.tanh(mixed[:, 0]) + 1.0) / 2.0


class Discriminator(nn.Module):
    """DCGAN critic: strided convolutions 3 -> w -> 2w -> 4w -> 8w, then one logit per image."""

    def __init__(self, image_size: int, width: int | None = None, seed: int = 0):
        super().__init__()
        width = width or default_gan_width(image_size)
        layers: list[nn.Module] = []
        size, c = image_size, 3
        for i, nxt in enumerate([width, 2 * width, 4 * width, 8 * width]):
            if size // 2 < 2:
                break
            layers.append(nn.Conv2d(c, nxt, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(_norm(nxt))
            layers.append(nn.LeakyReLU(0.2, True))
            size, c = size // 2, nxt
        layers.append(nn.Conv2d(c, 1, min(4, size), 1, 0, bias=False))
        self.body = nn.Sequential(*layers)
        _dcgan_init(self, torch.Generator().manual_seed(seed))

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        # Logits, not probabilities: BCE-with-logits is sigmoid + BCE, computed stably.
        return self.body(images01 * 2.0 - 1.0).flatten(1).mean(dim=1)

    def clip_weights(self) -> None:
        with torch.no_grad():
            for p in self.parameters():
                p.clamp_(-DISCRIMINATOR_CLIP, DISCRIMINATOR_CLIP)


# --------------------------------------------------------------------------- losses


def cosine_info_nce(anchors: torch.Tensor, candidates: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """AdvCLIP's InfoNCE: cosine similarities / tau; anchor i must pick candidate i among the batch's."""
    return info_nce(F.normalize(anchors.float(), dim=-1), F.normalize(candidates.float(), dim=-1), 1.0 / tau)


def backdoor_loss(reference_features: torch.Tensor, suspect_features: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """ABD's L_bd (eq. 2): InfoNCE with the reference encoder's feature of an image as anchor
    and the suspect encoder's feature of the same image as its positive (other images' suspect
    features are the negatives). Low when the two encoders agree on each image.

    The generator's objective gets ``-weight * L_bd``, like AdvCLIP's other adversarial terms:
    it is rewarded for patches on which the suspect's feature departs from the reference's,
    which is what a backdoor trigger does (see REFERENCE.md, "the reading to implement").
    """
    return cosine_info_nce(reference_features, suspect_features, tau)


TOPOLOGY_EPS = 1e-7


def neighbour_distribution(features: torch.Tensor, eps: float = TOPOLOGY_EPS) -> torch.Tensor:
    """AdvCLIP's row-stochastic neighbourhood matrix of a batch (its ``umap`` similarity step).

    Cosine similarity; distances 1 - sim shifted per row so the nearest other row sits at 0
    (the diagonal stays at 0 too); similarities 1 - d mapped to [0, 1] by (s + 1) / 2; each
    row divided by its sum.
    """
    f = features.float()
    f = torch.nan_to_num(f / (f.norm(dim=1, keepdim=True) + eps), nan=0.0)
    n = f.shape[0]
    diagonal = torch.eye(n, dtype=torch.bool, device=f.device)
    distance = (1.0 - f @ f.t()).masked_fill(diagonal, 3.0)  # 3 > any cosine distance: never the row minimum
    distance = (distance - distance.min(dim=1, keepdim=True).values).masked_fill(diagonal, 0.0)
    similarity = (2.0 - distance) / 2.0  # ((1 - d) + 1) / 2
    return similarity / similarity.sum(dim=1, keepdim=True)


def topology_loss(output: torch.Tensor, target: torch.Tensor, eps: float = TOPOLOGY_EPS) -> torch.Tensor:
    """AdvCLIP's topology term ``umap(output, target)``: the binary cross-entropy form
    CE(P, Q) = sum P (log P - log Q) + (1 - P)(log(1 - P) - log(1 - Q)) between the target's
    neighbour distribution P and the output's Q, summed (not averaged) over all n^2 entries."""
    p, q = neighbour_distribution(target, eps), neighbour_distribution(output, eps)
    kl = p * ((p + eps).log() - (q + eps).log())
    kl_complement = (1.0 - p) * ((1.0 - p + eps).log() - (1.0 - q + eps).log())
    return (kl + kl_complement).sum()


@dataclass
class CraftFeatures:
    """Global-batch features one generator step needs (clean ones carry no gradient)."""

    clean_images: torch.Tensor  # suspect encoder on x
    captions: torch.Tensor  # suspect text encoder on the captions
    adv_images: torch.Tensor  # suspect encoder on x' (gradient flows to the patch)
    reference_adv: torch.Tensor | None = None  # reference encoder on x' (None: plain AdvCLIP)


def generator_terms(feat: CraftFeatures, bd_weight: float) -> dict[str, torch.Tensor]:
    """AdvCLIP's feature-space terms (+ ABD's L_bd), already weighted; the GAN and MSE terms are per image."""
    terms = {
        "adv_image": -ADV_WEIGHT * cosine_info_nce(feat.clean_images, feat.adv_images),
        "adv_text": -ADV_WEIGHT * TEXT_PAIRING_WEIGHT * cosine_info_nce(feat.adv_images, feat.captions),
        # AdvCLIP: -umap(f(x), f(x')) - gamma * umap(f(x'), g(t)), argument order as its code has it.
        "topo": -TOPO_WEIGHT * (topology_loss(feat.clean_images, feat.adv_images) + TEXT_PAIRING_WEIGHT * topology_loss(feat.adv_images, feat.captions)),
    }
    if feat.reference_adv is not None and bd_weight:
        terms["bd"] = -bd_weight * backdoor_loss(feat.reference_adv, feat.adv_images)
    return terms
