"""transformers `CLIPConfig` (config.json) <-> open_clip model config.

Only the fields that change the computation are read: tower sizes, heads, MLP
width, LayerNorm epsilon, activation, input and context sizes, projection
width. A field config.json leaves out means transformers' default (older
transformers wrote only the fields that differ from it), so the defaults below
are transformers' own. Models of another family that share the layout (SigLIP,
ALIGN, CLIP variants with another text tower) are refused with the reason.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from clipsan.errors import UserError

T = TypeVar("T")

CLIP_BPE_VOCAB = 49408
TEXT_DEFAULTS = {
    "vocab_size": CLIP_BPE_VOCAB,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}
VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
PROJECTION_DIM = 512
ACTIVATIONS = ("quick_gelu", "gelu")  # open_clip's QuickGELU and nn.GELU (exact)
# CLIP's text tower pools at the first end-of-text token: open_clip at the largest token id
# (49407 in CLIP's BPE), transformers at eos_token_id (2 meant "the largest id" before transformers 4.31).
POOLING_EOS_IDS = (2, 49407)
OPEN_CLIP_LN_EPS = 1e-5
OPEN_CLIP_HEAD_WIDTH = 64
OPEN_CLIP_MLP_RATIO = 4.0

OTHER_FAMILIES = {
    "siglip": "SigLIP (sigmoid loss, its own text tower and tokenizer)",
    "siglip2": "SigLIP 2 (sigmoid loss, its own text tower and tokenizer)",
    "align": "ALIGN (EfficientNet image tower, BERT text tower)",
    "altclip": "AltCLIP (XLM-RoBERTa text tower)",
    "chinese_clip": "Chinese-CLIP (BERT text tower)",
    "metaclip_2": "MetaCLIP 2 (multilingual tokenizer)",
    "clipseg": "CLIPSeg (a segmentation model)",
    "owlvit": "OWL-ViT (a detection model)",
    "owlv2": "OWLv2 (a detection model)",
    "x_clip": "X-CLIP (a video model)",
    "clap": "CLAP (an audio model)",
    "blip": "BLIP (a captioning model)",
    "flava": "FLAVA (a multimodal encoder)",
}
UNSUPPORTED = "clipsan purifies CLIP (contrastive loss, ViT and CLIP-BPE text towers) only"


def _read_as_config(read: Callable[..., T]) -> Callable[..., T]:
    """config.json is untrusted: a field of the wrong type or an impossible value (a string where a
    size goes, a list where a tower goes) is the file's fault, told in one line naming it."""

    @functools.wraps(read)
    def reading(path: Path, config: dict[str, Any], *args, **kwargs) -> T:
        try:
            return read(path, config, *args, **kwargs)
        except (ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError, OverflowError) as err:
            raise UserError(f"{path}: not a CLIP config clipsan can read ({type(err).__name__}: {err})") from None

    return reading


@_read_as_config
def refuse_other_family(path: Path, config: dict[str, Any]) -> None:
    model_type = config.get("model_type")
    if model_type in ("clip_vision_model", "clip_text_model"):
        raise UserError(f"{path}: a {model_type} (one CLIP tower), not a CLIPModel; clipsan needs both towers")
    if model_type == "clip":
        architectures = config.get("architectures") or ["CLIPModel"]
        if "CLIPModel" not in architectures:
            raise UserError(f"{path}: a {'/'.join(architectures)} (one CLIP tower), not a CLIPModel; clipsan needs both towers")
        return
    family = OTHER_FAMILIES.get(str(model_type), f"model_type {model_type!r}")
    raise UserError(f"{path}: a transformers {family} model, not CLIP; {UNSUPPORTED}")


def _tower(config: dict[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    # transformers gives `<tower>_config_dict` (very old files) precedence over `<tower>_config`.
    return {**defaults, **(config.get(key) or {}), **(config.get(f"{key}_dict") or {})}


def _square(path: Path, field: str, value: Any) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UserError(f"{path}: {field} {value} is not square; clipsan supports square inputs only")
        value = value[0]
    return int(value)


def _mlp_ratio(path: Path, tower: str, tower_cfg: dict[str, Any]) -> float:
    width, hidden = int(tower_cfg["hidden_size"]), int(tower_cfg["intermediate_size"])
    ratio = hidden / width
    if int(width * ratio) != hidden:  # open_clip sizes the MLP as int(width * mlp_ratio)
        raise UserError(f"{path}: {tower} intermediate_size {hidden} cannot be expressed as open_clip's int(width * mlp_ratio)")
    return ratio


def _heads(path: Path, tower: str, tower_cfg: dict[str, Any]) -> int:
    width, heads = int(tower_cfg["hidden_size"]), int(tower_cfg["num_attention_heads"])
    if heads < 1 or width % heads:
        raise UserError(f"{path}: {tower} hidden_size {width} is not a multiple of num_attention_heads {heads}")
    return heads


@_read_as_config
def activation_of(path: Path, config: dict[str, Any]) -> tuple[str, str]:
    """The activation both towers use, and where that came from."""
    text, vision = _tower(config, "text_config", TEXT_DEFAULTS), _tower(config, "vision_config", VISION_DEFAULTS)
    acts = {text["hidden_act"], vision["hidden_act"]}
    if len(acts) > 1:
        raise UserError(f"{path}: the towers use different activations ({vision['hidden_act']} / {text['hidden_act']}); open_clip has one for both")
    act = acts.pop()
    if act not in ACTIVATIONS:
        raise UserError(f"{path}: hidden_act {act!r} is not supported (expected one of {', '.join(ACTIVATIONS)})")
    stated = [t.get("hidden_act") for t in (config.get("text_config") or {}, config.get("vision_config") or {}) if t.get("hidden_act")]
    source = f"{path.name} hidden_act" if stated else f"{path.name} states no hidden_act: transformers' default {act}"
    return act, source


@_read_as_config
def model_cfg_from_config(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """open_clip's config for the CLIPModel config.json at `path` describes (UserError if none can)."""
    refuse_other_family(path, config)
    text, vision = _tower(config, "text_config", TEXT_DEFAULTS), _tower(config, "vision_config", VISION_DEFAULTS)
    act, _ = activation_of(path, config)
    if int(text["vocab_size"]) != CLIP_BPE_VOCAB:
        raise UserError(f"{path}: the text tower has a {text['vocab_size']}-token vocabulary, CLIP's BPE has {CLIP_BPE_VOCAB}; {UNSUPPORTED}")
    if text.get("eos_token_id") not in POOLING_EOS_IDS:
        raise UserError(f"{path}: text eos_token_id {text.get('eos_token_id')} is not CLIP BPE's end-of-text token (49407); {UNSUPPORTED}")
    if int(vision["num_channels"]) != 3:
        raise UserError(f"{path}: vision num_channels {vision['num_channels']}; clipsan reads RGB images (3)")
    vision_width, text_width = int(vision["hidden_size"]), int(text["hidden_size"])
    vision_cfg: dict[str, Any] = {
        "image_size": _square(path, "image_size", vision["image_size"]),
        "layers": int(vision["num_hidden_layers"]),
        "width": vision_width,
        "patch_size": _square(path, "patch_size", vision["patch_size"]),
    }
    head_width = vision_width // _heads(path, "vision", vision)
    if head_width != OPEN_CLIP_HEAD_WIDTH:
        vision_cfg["head_width"] = head_width
    text_cfg: dict[str, Any] = {
        "context_length": int(text["max_position_embeddings"]),
        "vocab_size": int(text["vocab_size"]),
        "width": text_width,
        "heads": _heads(path, "text", text),
        "layers": int(text["num_hidden_layers"]),
    }
    # Only fields that differ from open_clip's defaults, so a config equal to a shipped one is known by its name.
    for tower_cfg, hf_tower, tower in ((vision_cfg, vision, "vision"), (text_cfg, text, "text")):
        ratio = _mlp_ratio(path, tower, hf_tower)
        if ratio != OPEN_CLIP_MLP_RATIO:
            tower_cfg["mlp_ratio"] = ratio
        eps = float(hf_tower["layer_norm_eps"])
        if not math.isclose(eps, OPEN_CLIP_LN_EPS, rel_tol=1e-9):
            tower_cfg["norm_kwargs"] = {"eps": eps}
    cfg: dict[str, Any] = {"embed_dim": int(config.get("projection_dim") or PROJECTION_DIM), "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    if act == "quick_gelu":
        cfg["quick_gelu"] = True
    return cfg


# --------------------------------------------------------------------------- open_clip -> config.json

_VISION_KEYS = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio", "norm_kwargs"}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "norm_kwargs"}


def representable(cfg: dict[str, Any]) -> str | None:
    """None if transformers' CLIPModel can hold this open_clip config, else why not."""
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is a ResNet; transformers' CLIPModel has a ViT"
    if vision.get("timm_model_name"):
        return f"its image tower is timm's {vision['timm_model_name']}"
    extra = sorted(
        (set(vision) - _VISION_KEYS) | {f"text_cfg.{k}" for k in set(text) - _TEXT_KEYS} | (set(cfg) - {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"})
    )
    if extra:
        return f"its config has options transformers' CLIPModel lacks ({', '.join(extra)})"
    for tower in (vision, text):
        if set(tower.get("norm_kwargs") or {}) - {"eps"}:
            return "its LayerNorms take options other than eps"
    return None


def config_from_model_cfg(cfg: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for open_clip config `cfg`: `base` (the input's config.json) with every computation field rewritten."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    embed = int(cfg["embed_dim"])
    vision_width, text_width = int(vision["width"]), int(text["width"])
    vision_fields = {
        "hidden_size": vision_width,
        "intermediate_size": int(vision_width * float(vision.get("mlp_ratio", OPEN_CLIP_MLP_RATIO))),
        "num_hidden_layers": int(vision["layers"]),
        "num_attention_heads": vision_width // int(vision.get("head_width", OPEN_CLIP_HEAD_WIDTH)),
        "num_channels": 3,
        "image_size": int(vision["image_size"]),
        "patch_size": int(vision["patch_size"]),
        "hidden_act": act,
        "layer_norm_eps": float((vision.get("norm_kwargs") or {}).get("eps", OPEN_CLIP_LN_EPS)),
        "projection_dim": embed,
    }
    text_fields = {
        "vocab_size": int(text.get("vocab_size", CLIP_BPE_VOCAB)),
        "hidden_size": text_width,
        "intermediate_size": int(text_width * float(text.get("mlp_ratio", OPEN_CLIP_MLP_RATIO))),
        "num_hidden_layers": int(text.get("layers", 12)),
        "num_attention_heads": int(text.get("heads", 8)),
        "max_position_embeddings": int(text.get("context_length", 77)),
        "hidden_act": act,
        "layer_norm_eps": float((text.get("norm_kwargs") or {}).get("eps", OPEN_CLIP_LN_EPS)),
        "projection_dim": embed,
    }
    out = copy.deepcopy(base) if base else {"architectures": ["CLIPModel"], "model_type": "clip", "logit_scale_init_value": 2.6592, "initializer_factor": 1.0}
    for legacy in ("text_config_dict", "vision_config_dict"):  # they would override what is written here
        out.pop(legacy, None)
    out["projection_dim"] = embed
    out["vision_config"] = {"model_type": "clip_vision_model", **(out.get("vision_config") or {}), **vision_fields}
    text_config = {"model_type": "clip_text_model", "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1, **(out.get("text_config") or {})}
    out["text_config"] = {**text_config, **text_fields}
    out["dtype"] = "float32"  # clipsan writes float32 weights, whatever the input's dtype was
    if "torch_dtype" in out:  # the same field as transformers < 4.56 names it
        out["torch_dtype"] = "float32"
    return out


# --------------------------------------------------------------------------- shapes -> config.json


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, Any], list[str]]:
    """A config.json for weights given without one (open_clip names), and the fields it had to assume."""

    def blocks(prefix: str) -> int:
        indices = [int(k[len(prefix) :].split(".")[0]) for k in shapes if k.startswith(prefix)]
        return max(indices) + 1 if indices else 0

    vision_width, patch = shapes["visual.conv1.weight"][0], shapes["visual.conv1.weight"][-1]
    grid = math.isqrt(shapes["visual.positional_embedding"][0] - 1)
    vocab, text_width = shapes["token_embedding.weight"]
    heads = {}
    for tower, width in (("vision", vision_width), ("text", text_width)):
        if width % OPEN_CLIP_HEAD_WIDTH:
            raise UserError(
                f"{tower} width {width} is not a multiple of {OPEN_CLIP_HEAD_WIDTH}, so its head count cannot be assumed; pass the folder with its config.json"
            )
        heads[tower] = width // OPEN_CLIP_HEAD_WIDTH
    config = {
        "model_type": "clip",
        "projection_dim": shapes["visual.proj"][1],
        "vision_config": {
            "hidden_size": vision_width,
            "intermediate_size": shapes["visual.transformer.resblocks.0.mlp.c_fc.weight"][0],
            "num_hidden_layers": blocks("visual.transformer.resblocks."),
            "num_attention_heads": heads["vision"],
            "image_size": grid * patch,
            "patch_size": patch,
        },
        "text_config": {
            "vocab_size": vocab,
            "hidden_size": text_width,
            "intermediate_size": shapes["transformer.resblocks.0.mlp.c_fc.weight"][0],
            "num_hidden_layers": blocks("transformer.resblocks."),
            "num_attention_heads": heads["text"],
            "max_position_embeddings": shapes["positional_embedding"][0],
        },
    }
    assumed = [
        f"num_attention_heads = hidden_size / {OPEN_CLIP_HEAD_WIDTH} (vision {heads['vision']}, text {heads['text']})",
        f"layer_norm_eps {OPEN_CLIP_LN_EPS:g}",
        "hidden_act quick_gelu (transformers' default)",
    ]
    return config, assumed
