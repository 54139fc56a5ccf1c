"""transformers `SiglipConfig` / `Siglip2Config` (config.json) <-> open_clip model config.

Only the fields that change the computation are read. A field config.json leaves out means
transformers' default, so the defaults below are transformers' own. The image tower becomes a
clipsan-named timm ViT (``clipsan.models.siglip_vit``): open_clip's named SigLIP towers compute
exact GELU where transformers computes ``hidden_act`` (tanh-approximated by default), and have
fixed sizes. SigLIP 2's image tower reads any number of patches at any aspect ratio; clipsan
reads square images of ``sqrt(num_patches) * patch_size`` pixels, where it computes the same.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from clipsan.errors import UserError
from clipsan.models.siglip_vit import TowerSpec, tower_of

FAMILIES = ("siglip", "siglip2")
TEXT_DEFAULTS = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 64,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "projection_size": None,  # None: the text width
}
VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,  # SigLIP
    "num_patches": 256,  # SigLIP 2
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": True,
}
# transformers' activations -> nn.GELU's `approximate` (gelu_new is the same tanh formula written out).
ACTIVATIONS = {"gelu": "none", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}
INIT_LOGIT_BIAS = -10.0  # open_clip's SigLIP configs' (the bias is a weight: only a random init uses it)


def _tower(config: dict[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    return {**defaults, **(config.get(key) or {})}


def _int(path: Path, field: str, value: Any) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UserError(f"{path}: {field} {value} is not square; clipsan supports square inputs only")
        value = value[0]
    return int(value)


def _approximate(path: Path, tower: str, act: Any) -> str:
    if act not in ACTIVATIONS:
        raise UserError(f"{path}: {tower} hidden_act {act!r} is not supported (expected one of {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[act]


def model_cfg_from_config(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """open_clip's config for the SiglipModel / Siglip2Model config.json at `path` (UserError if none can hold it)."""
    family = config.get("model_type")
    text, vision = _tower(config, "text_config", TEXT_DEFAULTS), _tower(config, "vision_config", VISION_DEFAULTS)
    if not vision.get("vision_use_head", True):
        raise UserError(f"{path}: vision_use_head is false: the image tower has no pooled output to compare with text")
    if int(vision["num_channels"]) != 3:
        raise UserError(f"{path}: vision num_channels {vision['num_channels']}; clipsan reads RGB images (3)")
    patch = _int(path, "patch_size", vision["patch_size"])
    if family == "siglip2":
        side = math.isqrt(int(vision["num_patches"]))
        if side * side != int(vision["num_patches"]):
            raise UserError(f"{path}: num_patches {vision['num_patches']} is not a square grid")
        image = side * patch
    else:
        image = _int(path, "image_size", vision["image_size"])
    vision_width, text_width = int(vision["hidden_size"]), int(text["hidden_size"])
    projection = int(text.get("projection_size") or text_width)
    if projection != vision_width:
        raise UserError(f"{path}: text projection_size {projection} differs from the image width {vision_width}; their features cannot be compared")
    for tower, cfg in (("vision", vision), ("text", text)):
        width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        if heads < 1 or width % heads:
            raise UserError(f"{path}: {tower} hidden_size {width} is not a multiple of num_attention_heads {heads}")
    spec = TowerSpec(
        patch=patch,
        image=image,
        width=vision_width,
        depth=int(vision["num_hidden_layers"]),
        heads=int(vision["num_attention_heads"]),
        mlp=int(vision["intermediate_size"]),
        act="gelutanh" if _approximate(path, "vision", vision["hidden_act"]) == "tanh" else "gelu",
        eps=float(vision["layer_norm_eps"]),
    )
    ratio = int(text["intermediate_size"]) / text_width
    if int(text_width * ratio) != int(text["intermediate_size"]):  # open_clip sizes the MLP as int(width * mlp_ratio)
        raise UserError(f"{path}: text intermediate_size {text['intermediate_size']} cannot be expressed as open_clip's int(width * mlp_ratio)")
    text_cfg: dict[str, Any] = {
        "context_length": int(text["max_position_embeddings"]),
        "vocab_size": int(text["vocab_size"]),
        "width": text_width,
        "heads": int(text["num_attention_heads"]),
        "layers": int(text["num_hidden_layers"]),
        "mlp_ratio": ratio,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": float(text["layer_norm_eps"])},
        "act_kwargs": {"approximate": _approximate(path, "text", text["hidden_act"])},
    }
    vision_cfg = {"image_size": image, "timm_model_name": spec.name, "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"}
    return {"embed_dim": vision_width, "init_logit_bias": INIT_LOGIT_BIAS, "custom_text": True, "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def config_from_shapes(shapes: dict[str, tuple[int, ...]], family: str) -> tuple[dict[str, Any], list[str]]:
    """A config.json for SigLIP weights given without one (open_clip names), and what it had to assume.

    Head counts cannot be read from weights: a shipped architecture with exactly these shapes
    states them (So400m's heads are 72 wide), else they are assumed 64 wide.
    """
    from clipsan.checkpoints.arch_inference import shipped_heads

    def blocks(prefix: str) -> int:
        return len({k[len(prefix) :].split(".")[0] for k in shapes if k.startswith(prefix)})

    width, _, patch, _ = shapes["visual.trunk.patch_embed.proj.weight"]
    vocab, text_width = shapes["text.token_embedding.weight"]
    side = math.isqrt(shapes["visual.trunk.pos_embed"][1])
    heads, source = shipped_heads(shapes), "as the shipped architecture with these shapes"
    if heads is None:
        heads, source = (width // 64, text_width // 64), "head width 64"
    vision = {
        "hidden_size": width,
        "intermediate_size": shapes["visual.trunk.blocks.0.mlp.fc1.weight"][0],
        "num_hidden_layers": blocks("visual.trunk.blocks."),
        "num_attention_heads": heads[0],
        "patch_size": patch,
    }
    vision.update({"num_patches": side * side} if family == "siglip2" else {"image_size": side * patch})
    text = {
        "vocab_size": vocab,
        "hidden_size": text_width,
        "intermediate_size": shapes["text.transformer.resblocks.0.mlp.c_fc.weight"][0],
        "num_hidden_layers": blocks("text.transformer.resblocks."),
        "num_attention_heads": heads[1],
        "max_position_embeddings": shapes["text.positional_embedding"][0],
        "projection_size": shapes["text.text_projection.weight"][0],
    }
    assumed = [f"num_attention_heads {heads[0]} (image) and {heads[1]} (text), {source}", "layer_norm_eps 1e-06", "hidden_act gelu_pytorch_tanh"]
    return {"model_type": family, "vision_config": vision, "text_config": text}, assumed


# --------------------------------------------------------------------------- a model -> config.json


def representable(cfg: dict[str, Any]) -> str | None:
    """None if transformers' SiglipModel can hold this open_clip SigLIP config, else why not."""
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    name = str(vision.get("timm_model_name") or "")
    named_siglip = name.startswith("vit_") and "_siglip_" in name and "_gap_" not in name  # timm's SigLIP ViTs with the pooling head
    if not (tower_of(cfg) or named_siglip) or vision.get("timm_pool", "map") != "map" or vision.get("timm_proj") not in ("none", None):
        return f"its image tower ({name or 'open_clip ViT'}) is not a ViT with SigLIP's attention-pooling head"
    if not text.get("no_causal_mask") or text.get("pool_type") != "last" or not text.get("proj_bias") or text.get("hf_model_name") or text.get("embed_cls"):
        return "its text tower is not SigLIP's (no causal mask, last-token pooling, a biased projection)"
    return None


def _hidden_act(act) -> str:
    return "gelu_pytorch_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"


def config_from_model(model, base: dict[str, Any] | None = None, family: str = "siglip") -> dict[str, Any]:
    """config.json for a SigLIP model: `base` (the input's config.json) with every computation field rewritten."""
    trunk, text = model.clip.visual.trunk, model.clip.text
    block, text_block = trunk.blocks[0], text.transformer.resblocks[0]
    patch = int(trunk.patch_embed.proj.kernel_size[0])
    vision_fields: dict[str, Any] = {
        "hidden_size": int(trunk.embed_dim),
        "intermediate_size": int(block.mlp.fc1.out_features),
        "num_hidden_layers": len(trunk.blocks),
        "num_attention_heads": int(block.attn.num_heads),
        "num_channels": 3,
        "patch_size": patch,
        "hidden_act": _hidden_act(block.mlp.act),
        "layer_norm_eps": float(trunk.norm.eps),
        "vision_use_head": True,
    }
    if family == "siglip2":
        vision_fields["num_patches"] = (int(model.image_size) // patch) ** 2
    else:
        vision_fields["image_size"] = int(model.image_size)
    text_fields = {
        "vocab_size": int(text.vocab_size),
        "hidden_size": int(text.width),
        "intermediate_size": int(text_block.mlp.c_fc.out_features),
        "num_hidden_layers": len(text.transformer.resblocks),
        "num_attention_heads": int(text.heads),
        "max_position_embeddings": int(text.context_length),
        "hidden_act": _hidden_act(text_block.mlp.gelu),
        "layer_norm_eps": float(text.ln_final.eps),
        "projection_size": int(text.text_projection.out_features),
    }
    out = copy.deepcopy(base) if base else {"architectures": [f"{'Siglip2' if family == 'siglip2' else 'Siglip'}Model"], "model_type": family}
    if model.file_tokenizer is not None:  # the ids the text tower was given: transformers checks them against the vocabulary
        text_fields["pad_token_id"] = model.file_tokenizer.pad_id
    out["vision_config"] = {"model_type": f"{family}_vision_model", **(out.get("vision_config") or {}), **vision_fields}
    text_config = {"model_type": f"{family}_text_model", **(out.get("text_config") or {}), **text_fields}
    for stale in ("bos_token_id", "eos_token_id"):  # transformers refuses ids outside the vocabulary
        if isinstance(text_config.get(stale), int) and text_config[stale] >= text_fields["vocab_size"]:
            text_config.pop(stale)
    out["text_config"] = text_config
    out["dtype"] = "float32"  # clipsan writes float32 weights, whatever the input's dtype was
    if "torch_dtype" in out:
        out["torch_dtype"] = "float32"
    return out
