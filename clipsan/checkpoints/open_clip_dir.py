"""open_clip hub folders: `open_clip_config.json` (model_cfg, preprocess_cfg) + the weights file
(+ a SigLIP model's tokenizer files, which open_clip itself would fetch from the hub by name)."""

from __future__ import annotations

from pathlib import Path

from clipsan.checkpoints.base import OPEN_CLIP, Checkpoint, read_json
from clipsan.checkpoints.state_dict import read_state_dict_file
from clipsan.checkpoints.tokenizer_files import OPEN_CLIP_DEFAULT_CLEAN, siglip_tokenizer
from clipsan.errors import UserError

CONFIG = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
WEIGHTS_OUT = "open_clip_model.safetensors"


def weights_file(folder: Path) -> Path | None:
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def is_folder(folder: Path) -> bool:
    return (folder / CONFIG).is_file() and weights_file(folder) is not None


def read_folder(folder: Path, shown: str) -> Checkpoint:
    """`shown`: the folder as the user named it (with or without `local-dir:`)."""
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise UserError(f"{config_path}: missing (an open_clip folder has open_clip_config.json)")
    config = read_json(config_path)
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise UserError(f"{config_path}: expected a 'model_cfg' object")
    weights = weights_file(folder)
    if weights is None:
        raise UserError(f"{shown}: no weights file (expected one of {', '.join(WEIGHT_FILES)})")
    checkpoint = read_state_dict_file(weights)
    checkpoint.layout, checkpoint.path, checkpoint.folder, checkpoint.source_config = OPEN_CLIP, folder, folder, config
    checkpoint.origin_quick_gelu = checkpoint.origin = None  # the config says; the file's layout is not evidence here
    checkpoint.model_cfg, checkpoint.cfg_source = model_cfg, CONFIG
    checkpoint.arch_hint = checkpoint.metadata.get("clipsan.arch") or folder.resolve().name
    stated = "quick_gelu" in model_cfg
    checkpoint.activation_source = f"{CONFIG} quick_gelu" if stated else f"{CONFIG} states no quick_gelu: open_clip's default gelu"
    preprocess = config.get("preprocess_cfg")
    checkpoint.preprocess_cfg = preprocess if isinstance(preprocess, dict) else None
    if model_cfg.get("init_logit_bias") is not None:  # SigLIP: the tokenizer files of open_clip's hub folder
        text_cfg = model_cfg.get("text_cfg") or {}
        clean = (text_cfg.get("tokenizer_kwargs") or {}).get("clean", OPEN_CLIP_DEFAULT_CLEAN)
        checkpoint.tokenizer = siglip_tokenizer(folder, int(text_cfg.get("context_length", 77)), open_clip_clean=clean)
    return checkpoint
