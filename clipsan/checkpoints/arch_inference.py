"""Which architecture a state dict is, from its key names and shapes alone.

Every open_clip config (and clipsan's) that can be built offline is a candidate; cheap
structural features read from the config and from the weights narrow them down before
any candidate's shape table is built (on the meta device: no memory, no init cost).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from clipsan.errors import UserError
from clipsan.models.registry import by_preference, is_shipped, list_archs, model_config, needs_hub_text_tower, preference_key
from clipsan.models.siglip_vit import tower_of
from clipsan.openclip import open_clip, quiet_open_clip

Shapes = Mapping[str, tuple[int, ...]]

_shape_tables: dict[str, dict[str, tuple[int, ...]] | None] = {}


@dataclass(frozen=True)
class ArchMatch:
    """Result of matching a state dict against the known architectures.

    `alternatives` are other names with identical key names and shapes (e.g. the
    -quickgelu twin): the weights cannot tell them apart, the user can with --arch.
    """

    arch: str
    alternatives: tuple[str, ...] = ()


def infer_arch(shapes: Shapes) -> str:
    """The architecture whose state dict has exactly these key names and shapes."""
    return match_arch(shapes).arch


def match_arch(shapes: Shapes, prefer_quickgelu: bool = False) -> ArchMatch:
    """Like `infer_arch`, also reporting equally good alternatives.

    Raises UserError naming the three closest candidates and what differs.
    """
    shapes = {k: tuple(v) for k, v in shapes.items()}
    wanted = state_signature(shapes)
    # Shipped configs only: which checkpoints a process read before must not change what a file is inferred to be.
    names = [n for n in list_archs() if is_shipped(n) and _buildable_offline(n)]
    lacking = [what for key, what in (("text_tokens", "a text token embedding"), ("vision_kind", "an image tower stem")) if key not in wanted]
    if lacking:
        # Every architecture open_clip builds has both: none can match, and building them all (a minute) would only confirm it.
        raise UserError(f"no known architecture has these {len(shapes)} weights' names and shapes: they lack {' and '.join(lacking)}")
    found = exact_match(shapes, prefer_quickgelu)
    if found is not None:
        return found
    raise UserError(_no_match_message(shapes, wanted, names))


def exact_match(shapes: Shapes, prefer_quickgelu: bool = False) -> ArchMatch | None:
    """The shipped architectures with exactly these names and shapes (None: no such one; nothing built to say why)."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    wanted = state_signature(shapes)
    names = [n for n in list_archs() if is_shipped(n) and _buildable_offline(n)]
    candidates = [n for n in names if _signatures_agree(wanted, config_signature(model_config(n)))]
    exact = [n for n in candidates if shape_table(n) == shapes]
    if not exact:
        return None
    ranked = by_preference(exact, prefer_quickgelu)
    return ArchMatch(ranked[0], tuple(ranked[1:]))


def _buildable_offline(name: str) -> bool:
    cfg = model_config(name)
    return cfg is not None and not needs_hub_text_tower(cfg)


def shape_table(arch: str) -> dict[str, tuple[int, ...]] | None:
    """Key names and shapes of `arch`'s state dict, built on the meta device (no memory,
    no init cost). Cached per process; None if the config cannot be built offline."""
    if arch not in _shape_tables:
        _shape_tables[arch] = _build_shape_table(arch)
    return _shape_tables[arch]


def _build_shape_table(arch: str) -> dict[str, tuple[int, ...]] | None:
    if not _buildable_offline(arch):
        return None
    try:
        with quiet_open_clip(), torch.device("meta"):
            clip = open_clip.create_model(arch, device="meta", pretrained_image=False, pretrained_text=False)
    except Exception:
        return None
    return {k: tuple(v.shape) for k, v in clip.state_dict().items()}


def config_signature(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    if not cfg:
        return {}
    vision = cfg.get("vision_cfg", {})
    text = cfg.get("text_cfg", {})
    signature: dict[str, Any] = {
        "text_tokens": (int(text.get("vocab_size", 49408)), int(text.get("width", 512))),
        "text_layers": int(text.get("layers", 12)),
    }
    layers = vision.get("layers", 12)
    if vision.get("timm_model_name"):
        signature["vision_kind"] = "timm"
    elif isinstance(layers, (list, tuple)):
        signature.update(vision_kind="resnet", vision_width=int(vision.get("width", 64)), vision_layers=tuple(int(n) for n in layers))
    else:
        signature.update(vision_kind="vit", vision_width=int(vision.get("width", 768)), vision_layers=int(layers))
    return signature


def state_signature(shapes: Shapes) -> dict[str, Any]:
    signature: dict[str, Any] = {}
    for prefix in ("", "text."):
        tokens = shapes.get(f"{prefix}token_embedding.weight")
        if tokens is not None and len(tokens) == 2:
            signature["text_tokens"] = tuple(tokens)
            signature["text_layers"] = _count_blocks(shapes, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
    stem = shapes.get("visual.conv1.weight")
    if any(k.startswith("visual.trunk.") for k in shapes):
        signature["vision_kind"] = "timm"
    elif "visual.attnpool.positional_embedding" in shapes and stem is not None:
        stages = tuple(_count_blocks(shapes, rf"visual\.layer{i}\.(\d+)\.") for i in (1, 2, 3, 4))
        # ModifiedResNet's stem starts at width // 2 channels.
        signature.update(vision_kind="resnet", vision_width=stem[0] * 2, vision_layers=stages)
    elif stem is not None and "visual.class_embedding" in shapes:
        signature.update(vision_kind="vit", vision_width=stem[0], vision_layers=_count_blocks(shapes, r"visual\.transformer\.resblocks\.(\d+)\."))
    return signature


def _count_blocks(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def _signatures_agree(wanted: Mapping[str, Any], offered: Mapping[str, Any]) -> bool:
    return all(offered[k] == v for k, v in wanted.items() if k in offered)


def _signature_distance(wanted: Mapping[str, Any], offered: Mapping[str, Any]) -> int:
    return sum(1 for k, v in wanted.items() if k in offered and offered[k] != v)


@dataclass(frozen=True)
class ShapeDiff:
    missing: list[str]  # in the architecture, not in the checkpoint
    unexpected: list[str]  # in the checkpoint, not in the architecture
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, checkpoint, architecture

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self, arch: str) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys ({_first_few(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys ({_first_few(self.unexpected)})")
        if self.mismatched:
            key, got, expected = self.mismatched[0]
            parts.append(f"{len(self.mismatched)} shape mismatches (first {key}: checkpoint {list(got)} vs {arch} {list(expected)})")
        return ", ".join(parts) or "identical"


def _first_few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def compare_shapes(checkpoint: Shapes, architecture: Shapes) -> ShapeDiff:
    """What separates a checkpoint's key names/shapes from an architecture's."""
    missing = [k for k in architecture if k not in checkpoint]
    unexpected = [k for k in checkpoint if k not in architecture]
    mismatched = [(k, tuple(checkpoint[k]), tuple(architecture[k])) for k in architecture if k in checkpoint and tuple(checkpoint[k]) != tuple(architecture[k])]
    return ShapeDiff(missing, unexpected, mismatched)


def _no_match_message(shapes: Shapes, wanted: Mapping[str, Any], names: list[str]) -> str:
    # Build only the configs whose cheap features are closest: enough to explain the miss.
    by_features = sorted(names, key=lambda n: (_signature_distance(wanted, config_signature(model_config(n))), preference_key(n)))
    scored = []
    for name in by_features[:8]:
        table = shape_table(name)
        if table is not None:
            diff = compare_shapes(shapes, table)
            if diff.size < len(shapes):  # a candidate differing in everything explains nothing
                scored.append((diff.size, preference_key(name), name, diff))
    scored.sort(key=lambda item: item[:2])
    closest = "; ".join(f"{name}: {diff.describe(name)}" for _, _, name, diff in scored[:3])
    return (
        f"no known architecture has these {len(shapes)} weights' names and shapes; closest: {closest or 'none'}; pass --arch NAME if it is a known architecture"
    )


def shipped_heads(shapes: Shapes) -> tuple[int, int] | None:
    """(image, text) attention heads of a shipped SigLIP architecture with exactly these shapes, or None.

    Weights cannot say how a width is split into heads; the architecture these shapes are known by can.
    """
    found = exact_match(shapes) if state_signature(shapes).get("text_tokens") else None
    if found is None:
        return None
    cfg = model_config(found.arch) or {}
    spec = tower_of(cfg)
    if spec is not None:
        vision_heads = spec.heads
    else:
        with quiet_open_clip(), torch.device("meta"):
            clip = open_clip.create_model(found.arch, device="meta", pretrained_image=False, pretrained_text=False)
        vision_heads = int(clip.visual.trunk.blocks[0].attn.num_heads)
    return vision_heads, int(cfg["text_cfg"].get("heads", 8))
