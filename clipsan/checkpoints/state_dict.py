"""A weights file given alone: open_clip, OpenAI `clip` package and CleanCLIP/BadCLIP state dicts.

(A transformers weight file given alone is recognised by its names and handed to
`clipsan.checkpoints.hf`.) The layout's origin is the only activation evidence such a
file carries: the original `clip` package's extra keys, or CleanCLIP's training
checkpoint, mean OpenAI-trained weights, which use QuickGELU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipsan.checkpoints import hf
from clipsan.checkpoints.base import CLEANCLIP, OPENAI, SAFETENSORS, TORCH, Checkpoint
from clipsan.checkpoints.tensors import as_float32, check_finite, read_weights_file, safetensors_names, sha256_file
from clipsan.errors import UserError

# Keys the original `clip` package keeps next to the weights (JIT archives' attributes).
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Where training scripts nest the weights: CleanCLIP / open_clip {"state_dict": ...}, others.
NESTED_WEIGHT_KEYS = ("state_dict", "model", "state_dict_ema")
# CleanCLIP's (and BadCLIP's, which derives from it) trainer writes exactly these keys; open_clip's
# trainer writes the same plus "scaler" under its default amp precision.
CLEANCLIP_KEYS = {"epoch", "name", "state_dict", "optimizer"}
# First components of CLIP weight names: open_clip's (incl. custom-text and CoCa towers) and transformers'.
CLIP_TOP_NAMES = {
    "visual",
    "transformer",
    "token_embedding",
    "positional_embedding",
    "ln_final",
    "text_projection",
    "logit_scale",
    "logit_bias",
    "text",
    "text_decoder",
    *hf.TOP_NAMES,
}

OPENAI_ORIGIN = "the original clip package's layout (input_resolution, context_length, vocab_size keys): OpenAI-trained"
CLEANCLIP_ORIGIN = "a CleanCLIP/BadCLIP training checkpoint ({epoch, name, state_dict, optimizer}): fine-tuned from OpenAI's CLIP"


def read_state_dict_file(path: Path) -> Checkpoint:
    names = safetensors_names(path)
    if names is not None:
        refuse_non_clip(path, names)  # before reading any data: a foreign file is refused at once
    obj, metadata = read_weights_file(path)
    state, layout = _normalise(path, obj)
    refuse_non_clip(path, list(state))
    check_finite(path, state)
    state, upcast = as_float32(state)
    sha256 = sha256_file(path)
    if hf.has_transformers_names(state):
        return hf.lone_file_checkpoint(path, state, metadata, sha256, upcast)
    layout = SAFETENSORS if names is not None and layout == TORCH else layout
    checkpoint = Checkpoint(state, layout, path, (path,), sha256, metadata)
    if layout == OPENAI:
        checkpoint.origin_quick_gelu, checkpoint.origin = True, OPENAI_ORIGIN
    elif layout == CLEANCLIP:
        checkpoint.origin_quick_gelu, checkpoint.origin = True, CLEANCLIP_ORIGIN
    if upcast:
        checkpoint.notes.append(f"{path}: {', '.join(upcast)} weights upcast to float32")
    return checkpoint


def refuse_non_clip(path: Path, names: list[str]) -> None:
    """Refuse at once a file none of whose tensor names is a CLIP weight's (no architecture search)."""
    if not names:
        raise UserError(f"{path}: holds no weights")
    if not any(name.removeprefix("module.").split(".")[0] in CLIP_TOP_NAMES for name in names):
        raise UserError(
            f"{path}: not a CLIP checkpoint: none of its {len(names)} tensor names is a CLIP weight's (first: {names[0]!r}); "
            "expected open_clip names (visual.*, transformer.*, token_embedding.weight, ...) or transformers' (vision_model.*, text_model.*)"
        )


def _normalise(path: Path, obj: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Reduce what a file holds to a flat name -> tensor dict: unwrap training-script nesting,
    strip DDP's `module.` prefix, drop the OpenAI package's non-weight entries."""
    state, layout = _unwrap_nested(path, obj)
    if any(k in state for k in OPENAI_EXTRA_KEYS):
        layout = OPENAI
    state = {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(f"{path}: expected a state dict of tensors, {not_tensors[0]!r} is a {type(state[not_tensors[0]]).__name__}")
    if not state:
        raise UserError(f"{path}: holds no weights")
    return state, layout


def _unwrap_nested(path: Path, obj: Any) -> tuple[dict[str, Any], str]:
    layout = TORCH
    for _ in range(3):  # {"state_dict": {...}} and at most a couple more levels
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), layout
        if set(obj) == CLEANCLIP_KEYS and isinstance(obj.get("state_dict"), Mapping):
            layout = CLEANCLIP
        inner = next((obj[k] for k in NESTED_WEIGHT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    keys = f" (top-level keys: {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, Mapping) else ""
    raise UserError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}{keys}")
