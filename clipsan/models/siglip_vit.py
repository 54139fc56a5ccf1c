"""SigLIP image towers of any size, as timm ViTs under names that state every size.

open_clip builds a SigLIP image tower with ``timm.create_model(vision_cfg.timm_model_name)``
and passes no sizes: only timm's named models (``vit_so400m_patch14_siglip_384``, ...) can be
built, each with exact GELU. A transformers ``SiglipModel`` may have any size and computes
its towers with tanh-approximated GELU (``gelu_pytorch_tanh``), so clipsan names such a tower
by its sizes — ``clipsan_siglip_vit_p16_i224_w768_d12_h12_m3072_gelutanh_eps1e-06`` — and
registers that name with timm before open_clip builds it (``register_tower``). The name is
the whole description: any clipsan process rebuilds the tower from a config that names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

__all__ = ["TowerSpec", "parse", "register_tower", "tower_of"]  # timm adds the names it registers here

PREFIX = "clipsan_siglip_vit"
ACTIVATIONS = {"gelu": "none", "gelutanh": "tanh"}  # name part -> nn.GELU(approximate=...)
_NAME = re.compile(rf"^{PREFIX}_p(\d+)_i(\d+)_w(\d+)_d(\d+)_h(\d+)_m(\d+)_({'|'.join(ACTIVATIONS)})_eps(\d+(?:p\d+)?(?:e-\d+)?)$")


@dataclass(frozen=True)
class TowerSpec:
    patch: int
    image: int
    width: int
    depth: int
    heads: int
    mlp: int  # the MLP's hidden width (blocks and the attention-pooling head alike)
    act: str  # "gelu" (exact) | "gelutanh"
    eps: float  # LayerNorm epsilon

    @property
    def name(self) -> str:
        # timm reads a "." as the start of a pretrained tag: the epsilon is written without one.
        eps = repr(float(self.eps)).replace(".", "p")
        return f"{PREFIX}_p{self.patch}_i{self.image}_w{self.width}_d{self.depth}_h{self.heads}_m{self.mlp}_{self.act}_eps{eps}"


def parse(name: str | None) -> TowerSpec | None:
    """The sizes a clipsan tower name states, or None for any other name."""
    found = _NAME.match(name or "")
    if found is None:
        return None
    *ints, act, eps = found.groups()
    return TowerSpec(*(int(v) for v in ints), act=act, eps=float(eps.replace("p", ".")))


def tower_of(cfg: Mapping[str, Any] | None) -> TowerSpec | None:
    """The clipsan tower an open_clip config's image tower names, if it names one."""
    return parse(((cfg or {}).get("vision_cfg") or {}).get("timm_model_name"))


_registered: set[str] = set()


def register_tower(cfg: Mapping[str, Any] | None) -> None:
    """Make the clipsan tower ``cfg`` names known to timm (idempotent; nothing for other configs)."""
    spec = tower_of(cfg)
    if spec is None or spec.name in _registered:
        return
    from timm.models import register_model

    def entry(pretrained: bool = False, **kwargs):
        return _build(spec, **kwargs)

    entry.__name__ = entry.__qualname__ = spec.name  # timm registers an entrypoint under its function's name
    register_model(entry)
    _registered.add(spec.name)


def _build(spec: TowerSpec, **kwargs) -> Any:
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn

    for unused in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(unused, None)
    # timm sizes an MLP as int(width * mlp_ratio): nudge the ratio so that gives exactly spec.mlp.
    ratio = spec.mlp / spec.width
    if int(spec.width * ratio) != spec.mlp:
        ratio = (spec.mlp + 0.5) / spec.width
    return VisionTransformer(
        img_size=spec.image,
        patch_size=spec.patch,
        embed_dim=spec.width,
        depth=spec.depth,
        num_heads=spec.heads,
        mlp_ratio=ratio,
        class_token=False,
        norm_layer=partial(nn.LayerNorm, eps=spec.eps),
        act_layer=partial(nn.GELU, approximate=ACTIVATIONS[spec.act]),
        **{"global_pool": "map", **kwargs},
    )
