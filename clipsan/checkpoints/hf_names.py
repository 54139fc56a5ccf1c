"""transformers `CLIPModel` weight names <-> open_clip's, in both directions.

open_clip 3.3.0 ships no converter for this layout. The map is a table of name pairs
plus two reshapes: transformers keeps separate q/k/v projections where open_clip's
`nn.MultiheadAttention` has one `in_proj` (q, k, v concatenated in that order), and
its projections are `nn.Linear` weights (out x in) where open_clip multiplies by a
matrix (in x out), i.e. the transpose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# Whole-model names: transformers -> open_clip, and whether the tensor is transposed.
TOP_LEVEL = {
    "logit_scale": ("logit_scale", False),
    "visual_projection.weight": ("visual.proj", True),
    "text_projection.weight": ("text_projection", True),
    "vision_model.embeddings.class_embedding": ("visual.class_embedding", False),
    "vision_model.embeddings.patch_embedding.weight": ("visual.conv1.weight", False),
    "vision_model.embeddings.position_embedding.weight": ("visual.positional_embedding", False),
    "vision_model.pre_layrnorm.weight": ("visual.ln_pre.weight", False),  # sic: transformers' spelling
    "vision_model.pre_layrnorm.bias": ("visual.ln_pre.bias", False),
    "vision_model.post_layernorm.weight": ("visual.ln_post.weight", False),
    "vision_model.post_layernorm.bias": ("visual.ln_post.bias", False),
    "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", False),
    "text_model.embeddings.position_embedding.weight": ("positional_embedding", False),
    "text_model.final_layer_norm.weight": ("ln_final.weight", False),
    "text_model.final_layer_norm.bias": ("ln_final.bias", False),
}

# Inside one transformer block (same in both towers).
BLOCK = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
QKV = ("q_proj", "k_proj", "v_proj")

# Block prefixes: transformers -> open_clip.
TOWERS = {"vision_model.encoder.layers.": "visual.transformer.resblocks.", "text_model.encoder.layers.": "transformer.resblocks."}

# Buffers older transformers versions saved with the weights; not weights.
IGNORED = re.compile(r"(vision|text)_model\.embeddings\.position_ids$")

_HF_BLOCK = re.compile(r"^(vision_model\.encoder\.layers\.|text_model\.encoder\.layers\.)(\d+)\.(.+)\.(weight|bias)$")
_OC_BLOCK = re.compile(r"^(visual\.transformer\.resblocks\.|transformer\.resblocks\.)(\d+)\.(.+)$")


def to_open_clip(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """open_clip's state dict from a transformers one, and the names the map does not know."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (block prefix, weight|bias) -> q/k/v
    for name, tensor in tensors.items():
        if IGNORED.match(name):
            continue
        if name in TOP_LEVEL:
            target, transpose = TOP_LEVEL[name]
            out[target] = tensor.t().contiguous() if transpose else tensor
            continue
        block = _HF_BLOCK.match(name)
        if block is None:
            unknown.append(name)
            continue
        tower, index, inner, kind = block.groups()
        prefix = f"{TOWERS[tower]}{index}."
        if inner.startswith("self_attn.") and inner.removeprefix("self_attn.") in QKV:
            qkv.setdefault((prefix, kind), {})[inner.removeprefix("self_attn.")] = tensor
        elif inner in BLOCK:
            out[f"{prefix}{BLOCK[inner]}.{kind}"] = tensor
        else:
            unknown.append(name)
    for (prefix, kind), parts in qkv.items():
        # An incomplete triple is left out: comparing names with the expected ones reports it.
        if set(parts) == set(QKV):
            out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts[p] for p in QKV], dim=0)
    return out, unknown


_OC_TOP = {target: (name, transpose) for name, (target, transpose) in TOP_LEVEL.items()}
_OC_BLOCK_NAMES = {v: k for k, v in BLOCK.items()}


def to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `to_open_clip` (for a model whose every weight has a transformers name)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in _OC_TOP:
            target, transpose = _OC_TOP[name]
            out[target] = tensor.t().contiguous() if transpose else tensor
            continue
        block = _OC_BLOCK.match(name)
        if block is None:
            raise KeyError(f"{name} has no transformers CLIPModel name")
        tower, index, inner = block.groups()
        prefix = f"{next(k for k, v in TOWERS.items() if v == tower)}{index}."
        if inner.startswith("attn.in_proj_"):
            kind = inner.removeprefix("attn.in_proj_")
            for part, chunk in zip(QKV, tensor.chunk(3, dim=0)):
                out[f"{prefix}self_attn.{part}.{kind}"] = chunk.contiguous()
            continue
        module, _, kind = inner.rpartition(".")
        if module not in _OC_BLOCK_NAMES:
            raise KeyError(f"{name} has no transformers CLIPModel name")
        out[f"{prefix}{_OC_BLOCK_NAMES[module]}.{kind}"] = tensor
    return out


def transformers_names(open_clip_names: list[str]) -> list[str]:
    """The transformers names of an open_clip state dict's keys (for naming missing weights)."""
    placeholder = torch.zeros(3)
    return list(to_transformers(dict.fromkeys(open_clip_names, placeholder)))
