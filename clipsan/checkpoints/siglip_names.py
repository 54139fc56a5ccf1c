"""transformers `SiglipModel` / `Siglip2Model` weight names <-> open_clip's, in both directions.

open_clip builds SigLIP as a custom-text model: a timm ViT image tower (`visual.trunk.`, with
timm's attention-pooling head `attn_pool`) and its own text transformer (`text.`). The map is a
table of name prefixes plus the reshapes between the two libraries' modules:

* attention: transformers keeps q/k/v projections apart; timm's block has one `qkv` Linear and
  open_clip's text block one `in_proj` (q, k, v stacked in that order);
* the pooling head: transformers' `nn.MultiheadAttention` stacks q/k/v in `in_proj_*`, timm's
  head has `q` and a stacked `kv`;
* the image position embedding is (N, D) there, (1, N, D) in timm;
* SigLIP 2's patch embedding is a Linear over patches flattened as (row, column, channel)
  (its image processor's order); timm's is the equivalent Conv2d, (out, channel, row, column).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from clipsan.checkpoints import hf_names

# transformers prefix -> open_clip prefix; "#" is a block index.
PREFIXES = (
    ("vision_model.embeddings.patch_embedding.", "visual.trunk.patch_embed.proj."),
    ("vision_model.post_layernorm.", "visual.trunk.norm."),
    ("vision_model.head.attention.out_proj.", "visual.trunk.attn_pool.proj."),
    ("vision_model.head.layernorm.", "visual.trunk.attn_pool.norm."),
    ("vision_model.head.mlp.", "visual.trunk.attn_pool.mlp."),
    ("vision_model.encoder.layers.#.layer_norm1.", "visual.trunk.blocks.#.norm1."),
    ("vision_model.encoder.layers.#.layer_norm2.", "visual.trunk.blocks.#.norm2."),
    ("vision_model.encoder.layers.#.mlp.", "visual.trunk.blocks.#.mlp."),
    ("vision_model.encoder.layers.#.self_attn.out_proj.", "visual.trunk.blocks.#.attn.proj."),
    ("text_model.embeddings.token_embedding.", "text.token_embedding."),
    ("text_model.final_layer_norm.", "text.ln_final."),
    ("text_model.head.", "text.text_projection."),
    ("text_model.encoder.layers.#.layer_norm1.", "text.transformer.resblocks.#.ln_1."),
    ("text_model.encoder.layers.#.layer_norm2.", "text.transformer.resblocks.#.ln_2."),
    ("text_model.encoder.layers.#.mlp.fc1.", "text.transformer.resblocks.#.mlp.c_fc."),
    ("text_model.encoder.layers.#.mlp.fc2.", "text.transformer.resblocks.#.mlp.c_proj."),
    ("text_model.encoder.layers.#.self_attn.out_proj.", "text.transformer.resblocks.#.attn.out_proj."),
)
# Whole names, same tensor.
NAMES = {
    "logit_scale": "logit_scale",
    "logit_bias": "logit_bias",
    "vision_model.head.probe": "visual.trunk.attn_pool.latent",
    "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
}
POSITIONS = ("vision_model.embeddings.position_embedding.weight", "visual.trunk.pos_embed")  # (N, D) <-> (1, N, D)
PATCH = ("vision_model.embeddings.patch_embedding.weight", "visual.trunk.patch_embed.proj.weight")
HEAD_IN = "vision_model.head.attention.in_proj_"  # + weight|bias <-> attn_pool.q.* and attn_pool.kv.*
HEAD_Q, HEAD_KV = "visual.trunk.attn_pool.q.", "visual.trunk.attn_pool.kv."
QKV = hf_names.QKV  # the order both libraries stack them in
_QKV_HF = re.compile(r"^(vision|text)_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv]_proj)\.(weight|bias)$")
_QKV_OC = re.compile(r"^(?:visual\.trunk\.blocks\.(\d+)\.attn\.qkv\.|text\.transformer\.resblocks\.(\d+)\.attn\.in_proj_)(weight|bias)$")
# Buffers some transformers versions saved with the weights; not weights.
IGNORED = re.compile(r"(vision|text)_model\.embeddings\.position_ids$")
# Names only a SigLIP checkpoint has (a CLIPModel has none of them).
MARKERS = ("logit_bias", "vision_model.head.probe", "text_model.head.weight")


def is_siglip(names) -> bool:
    return any(name in MARKERS for name in names)


def _pattern(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix).replace(re.escape("#"), r"(\d+)"))


_FORWARD = [(_pattern(hf), oc) for hf, oc in PREFIXES]
_BACKWARD = [(_pattern(oc), hf) for hf, oc in PREFIXES]


def _renamed(name: str, rules) -> str | None:
    for pattern, target in rules:
        found = pattern.match(name)
        if found:
            head = target.replace("#", found.group(1)) if found.groups() else target
            return head + name[found.end() :]
    return None


def to_open_clip(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """open_clip's state dict from a transformers SigLIP / SigLIP 2 one, and the names the map does not know."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if IGNORED.match(name):
            continue
        if name in ("logit_scale", "logit_bias"):
            out[name] = tensor.reshape(())  # [1] in transformers, a scalar in open_clip's SigLIP
        elif name in NAMES:
            out[NAMES[name]] = tensor
        elif name == POSITIONS[0]:
            out[POSITIONS[1]] = tensor.unsqueeze(0)
        elif name == PATCH[0] and tensor.dim() == 2:  # SigLIP 2: a Linear over flattened patches
            out[PATCH[1]] = _linear_to_conv(tensor)
        elif name.startswith(HEAD_IN):
            kind = name.removeprefix(HEAD_IN)
            width = tensor.shape[0] // 3
            out[f"{HEAD_Q}{kind}"], out[f"{HEAD_KV}{kind}"] = tensor[:width], tensor[width:]
        elif found := _QKV_HF.match(name):
            tower, index, part, kind = found.groups()
            qkv.setdefault((tower, index, kind), {})[part] = tensor
        elif (renamed := _renamed(name, _FORWARD)) is not None:
            out[renamed] = tensor
        else:
            unknown.append(name)
    for (tower, index, kind), parts in qkv.items():
        if set(parts) == set(QKV):  # an incomplete triple is left out: comparing names with the model's reports it
            target = f"visual.trunk.blocks.{index}.attn.qkv.{kind}" if tower == "vision" else f"text.transformer.resblocks.{index}.attn.in_proj_{kind}"
            out[target] = torch.cat([parts[p] for p in QKV], dim=0)
    return out, unknown


def to_transformers(state: Mapping[str, torch.Tensor], siglip2: bool = False) -> dict[str, torch.Tensor]:
    """The inverse of `to_open_clip` (SigLIP 2's patch embedding as its Linear when `siglip2`)."""
    out: dict[str, torch.Tensor] = {}
    back = {v: k for k, v in NAMES.items()}
    head: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        if name in back:
            out[back[name]] = tensor.reshape(1) if name in ("logit_scale", "logit_bias") else tensor  # transformers keeps shape [1]
        elif name == POSITIONS[1]:
            out[POSITIONS[0]] = tensor.squeeze(0)
        elif name == PATCH[1] and siglip2:
            out[PATCH[0]] = _conv_to_linear(tensor)
        elif name.startswith((HEAD_Q, HEAD_KV)):
            kind = name.rsplit(".", 1)[-1]
            head.setdefault(kind, {})["q" if name.startswith(HEAD_Q) else "kv"] = tensor
        elif found := _QKV_OC.match(name):
            vision_index, text_index, kind = found.groups()
            tower, index = ("vision", vision_index) if vision_index is not None else ("text", text_index)
            for part, chunk in zip(QKV, tensor.chunk(3, dim=0)):
                out[f"{tower}_model.encoder.layers.{index}.self_attn.{part}.{kind}"] = chunk.contiguous()
        elif (renamed := _renamed(name, _BACKWARD)) is not None:
            out[renamed] = tensor
        else:
            raise KeyError(f"{name} has no transformers SiglipModel name")
    for kind, parts in head.items():
        out[f"{HEAD_IN}{kind}"] = torch.cat([parts["q"], parts["kv"]], dim=0)
    return out


def transformers_names(open_clip_names: list[str]) -> list[str]:
    """The transformers names of open_clip SigLIP keys (for naming missing weights)."""
    names = []
    for name in open_clip_names:
        try:
            placeholder = torch.zeros(1) if name.startswith("logit_") else torch.zeros(3, 3, 1, 1)
            names.extend(to_transformers({name: placeholder}))
        except KeyError:
            names.append(name)
    return names


def _linear_to_conv(weight: torch.Tensor) -> torch.Tensor:
    out, flat = weight.shape
    patch = math.isqrt(flat // 3)
    return weight.reshape(out, patch, patch, 3).permute(0, 3, 1, 2).contiguous()


def _conv_to_linear(weight: torch.Tensor) -> torch.Tensor:
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()
