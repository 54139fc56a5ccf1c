"""What a checkpoint reader hands on, whatever the layout it read."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipsan.errors import UserError
from clipsan.models.file_tokenizer import FileTokenizer

# Layouts, as reports name them (`layout` in every JSON report).
SAFETENSORS = "safetensors"  # an open_clip state dict (clipsan's outputs: with metadata)
TORCH = "torch"  # a .pt/.pth/.bin state dict, possibly nested in a training checkpoint
OPENAI = "openai"  # the original `clip` package's state dict (input_resolution, context_length, vocab_size)
CLEANCLIP = "cleanclip"  # a CleanCLIP/BadCLIP training checkpoint {epoch, name, state_dict, optimizer}
TRANSFORMERS = "transformers"  # a transformers CLIPModel folder (config.json + weights)
TRANSFORMERS_FILE = "transformers-file"  # its weights file alone
OPEN_CLIP = "open_clip"  # an open_clip hub folder (open_clip_config.json + weights)

LAYOUT_NAMES = {
    SAFETENSORS: "open_clip state dict (safetensors)",
    TORCH: "PyTorch state dict",
    OPENAI: "OpenAI clip-package state dict",
    CLEANCLIP: "CleanCLIP/BadCLIP training checkpoint",
    TRANSFORMERS: "transformers CLIPModel folder",
    TRANSFORMERS_FILE: "transformers CLIPModel weights without config.json",
    OPEN_CLIP: "open_clip folder",
}


@dataclass
class Checkpoint:
    """A checkpoint read from disk: finite float32 weights under open_clip's names, and what it says about itself."""

    tensors: dict[str, torch.Tensor]
    layout: str
    path: Path  # what the user named: a file or a folder
    files: tuple[Path, ...]  # the weight files read
    sha256: str  # of the weight file (of the shards in order, when sharded)
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors metadata of the first weight file
    model_cfg: dict[str, Any] | None = None  # the checkpoint's own open_clip config, when it has one
    cfg_source: str | None = None  # where model_cfg came from ("config.json", ...)
    activation_source: str | None = None  # how that config states the activation
    preprocess_cfg: dict[str, Any] | None = None
    arch_hint: str | None = None  # a name for a config registered from the checkpoint
    # For a bare state dict: what the layout's origin says about the activation (True = QuickGELU).
    origin_quick_gelu: bool | None = None
    origin: str | None = None
    # When no known architecture has these shapes: a config read from the shapes, and the fields it assumed.
    fallback_cfg: Callable[[], tuple[dict[str, Any], list[str]]] | None = None
    file_names: tuple[str, ...] | None = None  # the tensors' own names, when the layout renamed them
    folder: Path | None = None  # the folder whose config and tokenizer files an output carries over
    family: str = "clip"  # clip | siglip | siglip2: the transformers family a transformers layout was read as
    tokenizer: FileTokenizer | None = None  # a SigLIP checkpoint's own tokenizer, read from its folder
    source_config: dict[str, Any] | None = None  # config.json / open_clip_config.json as read
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_text(path: Path) -> str:
    """A layout's text file (merges.txt), or a one-line UserError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not readable UTF-8 text ({str(err).splitlines()[0]})") from None


def layout_name(layout: str, family: str = "clip") -> str:
    """How reports and notes name a layout: a transformers SigLIP folder is a SiglipModel one."""
    name = LAYOUT_NAMES[layout]
    return name.replace("CLIPModel", {"siglip": "SiglipModel", "siglip2": "Siglip2Model"}[family]) if family != "clip" else name


def read_json(path: Path) -> dict[str, Any]:
    """A layout's JSON file (config, index, tokenizer): an object, or a one-line UserError naming it."""
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value
