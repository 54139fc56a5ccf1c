"""PAR, Perturb and Recover (Singh, Croce, Hein, arXiv 2412.00727; code nmndeep/PerturbAndRecover).

The model being cleaned encodes an augmented image and its caption; a frozen copy of the input
model encodes the same two. The loss is CLIP's on the augmented pairs minus half the thresholded
squared distances between the two models' embeddings (``par_terms``): the model is pushed away
from where the suspect put things, until the batch's mean distance passes τ, while the CLIP term
recovers what the embeddings are for. As in the public code (readings in docs/par.md): the
distance is the mean over the global batch of ||u - v||² of unit vectors, each term is zeroed
(value and gradient) once that mean exceeds τ, and the logit scale is not trained.
"""

from __future__ import annotations

import copy

import torch

from clipsan.config import PARConfig
from clipsan.recipes.augment import par_augment_uint8
from clipsan.recipes.base import Recipe, encode_pair
from clipsan.recipes.losses import image_text_loss


def mean_squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the squared L2 distance between rows of ``a`` and ``b`` (summed over features)."""
    return (a - b).pow(2).sum(dim=-1).mean()


def thresholded(value: torch.Tensor, tau: float) -> torch.Tensor:
    """``value`` while it is at most τ; 0 (and no gradient) past it (the public code's threshold_tensor)."""
    return torch.where(value > tau, torch.zeros_like(value), value)


def par_terms(images, texts, frozen_images, frozen_texts, scale, tau: float, bias=None) -> dict[str, torch.Tensor]:
    """PAR's loss as named terms over the global batch; they sum to L_CLIP - ½(T_τ(img) + T_τ(txt))
    (L_CLIP: the model's own loss, SigLIP's sigmoid one given its ``bias``)."""
    return {
        "clip": image_text_loss(images, texts, scale, bias),
        "perturb_image": -0.5 * thresholded(mean_squared_distance(images, frozen_images), tau),
        "perturb_text": -0.5 * thresholded(mean_squared_distance(texts, frozen_texts), tau),
    }


class PAR(Recipe):
    config_type = PARConfig

    def __init__(self, config: PARConfig = PARConfig()) -> None:
        super().__init__(config)
        self.frozen = None  # the input model, frozen (f₀, g₀); made in prepare_run
        self.erase_pixel: tuple[int, ...] = ()  # the 8-bit pixel the model normalises to 0 (RandomErasing's value 0)

    def __getstate__(self) -> dict:
        # Data workers only need ``views``: don't ship the frozen model to them.
        return {**self.__dict__, "frozen": None}

    def prepare_run(self, job, training) -> None:
        model = job.model.model  # before training: the input model, also on --resume (weights come later)
        self.frozen = copy.deepcopy(model).to(job.rt.device).eval().requires_grad_(False)
        self.erase_pixel = tuple(round(255 * m) for m in model.preprocess_cfg["mean"])

    def views(self, sample):
        return {"image": par_augment_uint8(sample.pixels8, sample.generator("par"), self.config, self.erase_pixel), "text": sample.caption}

    def loss_terms(self, model, batch, rt):
        images, texts, scale, bias = encode_pair(model, batch["image"], batch["text"], rt)
        with torch.no_grad():
            frozen_images = rt.gather(rt.encode(self.frozen.encode_image, batch["image"]))
            frozen_texts = rt.gather(rt.encode(self.frozen.encode_text, batch["text"]))
        # The public code reads the scale with .item(): PAR does not train it (nor SigLIP's bias: docs/siglip.md).
        bias = None if bias is None else bias.detach()
        return par_terms(images, texts, frozen_images, frozen_texts, scale.detach(), self.config.threshold, bias)
