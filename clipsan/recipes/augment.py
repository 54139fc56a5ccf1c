"""Image augmentation: CleanCLIP's in-modal views (AutoAugment, made deterministic) and PAR's training views.

CleanCLIP augments images with torchvision's ``AutoAugment()`` (ImageNet policy).
torchvision draws the sub-policy, the application probabilities and the signs
from torch's *global* CPU generator, which would make a sample's view depend on
whatever else ran in the process. We run it with the global CPU generator
temporarily reseeded from the sample's own seed and restore it afterwards, so
the view depends on (seed, epoch, index) only and the caller's RNG is untouched.
"""

from __future__ import annotations

import functools
import math

import torch
from torchvision.transforms import AutoAugment, AutoAugmentPolicy


@functools.lru_cache(maxsize=1)
def _imagenet_policy() -> AutoAugment:
    return AutoAugment(AutoAugmentPolicy.IMAGENET)


def _seed_from(generator_or_seed: torch.Generator | int) -> int:
    if isinstance(generator_or_seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=generator_or_seed).item())
    return int(generator_or_seed)


def auto_augment(pixels01: torch.Tensor, generator_or_seed: torch.Generator | int) -> torch.Tensor:
    """AutoAugment (ImageNet policy) of a (3, H, W) image in [0, 1]; returns the same shape in [0, 1].

    The policy acts on uint8 pixels (posterize, solarize and equalize are
    defined on 8-bit values), so the image is quantised to 8 bits first.
    """
    as_uint8 = (pixels01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return auto_augment_uint8(as_uint8, generator_or_seed).float() / 255.0


def auto_augment_uint8(pixels8: torch.Tensor, generator_or_seed: torch.Generator | int) -> torch.Tensor:
    """``auto_augment`` on uint8 pixels (3, H, W), returning uint8: what data workers ship."""
    # fork_rng restores the global CPU generator on exit; only the CPU one is
    # reseeded (torch.manual_seed would also reseed CUDA generators).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(_seed_from(generator_or_seed))
        return _imagenet_policy()(pixels8)


def par_augment_uint8(pixels8: torch.Tensor, generator: torch.Generator, config, erase_pixel: tuple[int, ...]) -> torch.Tensor:
    """PAR's training view of uint8 pixels (3, H, W), as its public code builds it (utils.load_clip_model),
    returning uint8 (readings in docs/par.md):

    - with probability ``noise_prob``: x + clip(N(0, noise_std), 0, 1), clipped to [0, 1] (the code
      clips the noise itself, so it only brightens);
    - with probability ``erase_prob``: a square of ``erase_scale`` of the image area set to the pixel the
      model normalises to 0 (torchvision's RandomErasing, ratio 1, value 0, after Normalize).
    """
    x = pixels8.float() / 255.0
    if float(torch.rand((), generator=generator)) < config.noise_prob:
        noise = (torch.randn(x.shape, generator=generator) * config.noise_std).clamp(0.0, 1.0)
        x = (x + noise).clamp(0.0, 1.0)
    out = (x * 255.0).round().to(torch.uint8)
    if float(torch.rand((), generator=generator)) < config.erase_prob:
        _, height, width = out.shape
        low, high = config.erase_scale
        area = height * width * (low + (high - low) * float(torch.rand((), generator=generator)))
        side = round(math.sqrt(area))
        if 0 < side < min(height, width):
            top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
            out[:, top : top + side, left : left + side] = torch.tensor(erase_pixel, dtype=torch.uint8).view(3, 1, 1)
    return out
