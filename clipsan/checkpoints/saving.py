"""Saving clipsan's own files: safetensors whose metadata makes them self-describing.

The metadata carries the architecture, its config (with the activation) and normalisation,
so the file loads in any process, plus provenance the caller adds (command, method, source
sha256). ``clipsan.checkpoints.output`` writes a model back in the layout its input came in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clipsan import __version__
from clipsan.atomic import atomic_path, write_errors
from clipsan.checkpoints.resolve import META_ACTIVATION, META_ARCH, META_MODEL_CFG, META_PREPROCESS_CFG, activation_name
from clipsan.models import ClipModel
from clipsan.models.registry import uses_quick_gelu
from clipsan.tensor_files import save_tensors


def model_header(model: ClipModel, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """safetensors metadata of a model clipsan writes: the caller's fields (non-strings as JSON), then
    the architecture, its config (with the activation) and normalisation, so the file loads in any process."""
    header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    header.update(
        {
            "format": "pt",
            META_ARCH: model.arch,
            "clipsan.version": __version__,
            META_MODEL_CFG: json.dumps(model.model_cfg, sort_keys=True),
            META_PREPROCESS_CFG: json.dumps(model.preprocess_cfg, sort_keys=True),
            META_ACTIVATION: activation_name(uses_quick_gelu(model.model_cfg)),
        }
    )
    return header


def save_model(model: ClipModel, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write `model.clip`'s weights as safetensors, atomically (temp file, fsync, rename).

    Metadata always carries the architecture, its config and normalisation (so the file
    loads in any process), and the clipsan version; callers add command, method,
    source sha256, ... Non-string values are stored as JSON.
    """
    return write_safetensors(unshared_cpu_tensors(model.clip.state_dict()), path, model_header(model, metadata))


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], header: dict[str, str]) -> Path:
    path = Path(path)
    with write_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_tensors(tensors, tmp, header)
    return path


def unshared_cpu_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage (tied weights): give repeats their own copy."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        tensor = tensor.detach()
        storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        elif tensor.numel() and tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()  # a view into a larger buffer: store just the view
        seen.add(storage)
        out[key] = tensor.to("cpu")
    return out
