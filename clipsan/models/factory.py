"""Building a CLIP model from its architecture name, offline (open_clip's factory with random init).

Weights come from ``clipsan.checkpoints``; architectures that would need a Hugging Face
download are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from clipsan.errors import UserError
from clipsan.models.clip_model import ClipModel
from clipsan.models.registry import is_sigmoid_config, model_config, needs_hub_text_tower, unknown_arch_error
from clipsan.openclip import open_clip, quiet_open_clip


def create_model(
    arch: str,
    device: str | torch.device = "cpu",
    preprocess_cfg: Mapping[str, Any] | None = None,
) -> ClipModel:
    """A randomly initialised `arch` (never downloads). `preprocess_cfg` overrides mean/std."""
    cfg = model_config(arch)
    if cfg is None:
        raise unknown_arch_error(arch)
    if needs_hub_text_tower(cfg):
        raise UserError(f"{arch}: its text tower is a Hugging Face model ({cfg['text_cfg']['hf_model_name']}) that would be downloaded; clipsan runs offline")
    if is_sigmoid_config(cfg) and not (preprocess_cfg or {}).get("mean"):
        # open_clip's configs leave normalisation to the pretrained tag; every SigLIP tag uses 0.5 / 0.5.
        preprocess_cfg = {**(preprocess_cfg or {}), "mean": open_clip.constants.INCEPTION_MEAN, "std": open_clip.constants.INCEPTION_STD}
    with quiet_open_clip():
        try:
            clip = open_clip.create_model(
                arch,
                pretrained=None,
                device="cpu",
                pretrained_image=False,
                pretrained_text=False,
                force_preprocess_cfg=dict(preprocess_cfg) if preprocess_cfg else None,
            )
        except Exception as err:  # a config open_clip itself cannot build offline
            raise UserError(f"{arch}: cannot build this architecture offline ({_one_line(err)})") from None
    model = ClipModel(clip, arch, cfg, open_clip.get_model_preprocess_cfg(clip))
    return model.to(device)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
