"""Loading any checkpoint layout people download, and saving clipsan's own files.

Untrusted files are never unpickled: safetensors are read as data, and PyTorch files
go through `torch.load(weights_only=True)`, which refuses any pickle that would call
arbitrary code. The layouts (`clipsan.layouts`): open_clip / OpenAI / CleanCLIP state
dicts, transformers CLIPModel folders and their weights file alone, open_clip hub
folders. What clipsan writes is safetensors with metadata that makes the file
self-describing (architecture, config with its activation, normalisation, provenance);
`clipsan.layouts.output` writes it back in the input's layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from clipsan import __version__
from clipsan.engine.rundir import fsync_dir, fsync_file
from clipsan.errors import UserError
from clipsan.layouts import hf_names
from clipsan.layouts.base import LAYOUT_NAMES, Checkpoint
from clipsan.layouts.read import LOCAL_DIR_PREFIX, read_checkpoint
from clipsan.layouts.resolve import (
    META_ACTIVATION,
    META_ARCH,
    META_MODEL_CFG,
    META_PREPROCESS_CFG,
    ArchChoice,
    activation_name,
    preprocess_from_metadata,
    resolve_arch,
)
from clipsan.layouts.tensors import read_metadata, sha256_file
from clipsan.models import ClipModel, ShapeDiff, compare_shapes, create_model, uses_quick_gelu

__all__ = ["LOCAL_DIR_PREFIX", "META_ARCH", "LoadedModel", "load_model", "read_metadata", "save_model", "sha256_file"]


@dataclass
class LoadedModel:
    model: ClipModel
    arch: str
    arch_source: str  # flag | metadata | inferred | shapes | config.json | open_clip_config.json
    arch_alternatives: tuple[str, ...]  # same weights' shapes fit these archs too
    path: Path  # what MODEL named: the weights file, or the folder
    sha256: str  # of the weights file (of the shards in order, when sharded)
    metadata: dict[str, str] = field(default_factory=dict)
    layout: str = "safetensors"  # clipsan.layouts.base: the layout read
    activation_source: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: Checkpoint | None = None  # the layout's facts (folder, its config), for writing outputs in it; weights dropped

    @property
    def activation(self) -> str:
        return activation_name(uses_quick_gelu(self.model.model_cfg))

    def describe_arch(self) -> str:
        """E.g. 'RN50 (inferred; also matches: RN50-quickgelu)'."""
        text = f"{self.arch} ({self.arch_source}"
        if self.arch_alternatives:
            text += f"; also matches: {', '.join(self.arch_alternatives)}"
        return text + ")"

    def report_fields(self) -> dict[str, str]:
        """What every JSON report says about the checkpoint it read."""
        return {
            "layout": self.layout,
            "arch": self.arch,
            "arch_source": self.arch_source,
            "activation": self.activation,
            "activation_source": self.activation_source,
        }

    def announce(self, notes: Callable[[str], None], role: str = "model") -> None:
        """Tell the user what was read: layout, arch, activation and where each came from; then any warning."""
        notes(f"{role} {self.path}: {LAYOUT_NAMES[self.layout]}; arch {self.describe_arch()}; activation {self.activation} ({self.activation_source})")
        for line in self.notes:
            notes(line)
        for line in self.warnings:
            notes(f"warning: {line}")


# --------------------------------------------------------------------------- loading


def load_model(spec: str, arch: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load MODEL as given on the command line: a file, a folder, or `local-dir:FOLDER`."""
    checkpoint = read_checkpoint(spec)
    choice = resolve_arch(checkpoint, arch)
    model = _build_and_fill(checkpoint, choice)
    checkpoint.tensors = {}  # the model holds the weights now
    return LoadedModel(
        model.to(device),
        choice.arch,
        choice.source,
        choice.alternatives,
        checkpoint.path,
        checkpoint.sha256,
        checkpoint.metadata,
        layout=checkpoint.layout,
        activation_source=choice.activation_source,
        notes=[*checkpoint.notes, *choice.notes],
        warnings=[*checkpoint.warnings, *choice.warnings],
        source=checkpoint,
    )


def _build_and_fill(checkpoint: Checkpoint, choice: ArchChoice) -> ClipModel:
    path, arch = checkpoint.path, choice.arch
    preprocess = checkpoint.preprocess_cfg or preprocess_from_metadata(path, checkpoint.metadata)
    try:
        model = create_model(arch, device="cpu", preprocess_cfg=preprocess)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    state = _fit_to_model(model.clip, checkpoint.tensors)
    diff = compare_shapes(_shapes(state), _shapes(model.clip.state_dict()))
    if diff.size:
        if checkpoint.file_names is not None:
            diff = _in_file_names(diff, checkpoint.file_names)
        origin = {"flag": "--arch", "metadata": f"metadata {META_ARCH}", "inferred": "inferred"}.get(choice.source, choice.source)
        raise UserError(f"{path}: weights do not fit architecture {arch} ({origin}): {diff.describe(arch)}")
    model.clip.load_state_dict(state, strict=True)
    return model


def _in_file_names(diff: ShapeDiff, file_names: tuple[str, ...]) -> ShapeDiff:
    """The difference under the file's own (transformers) names, so the user can find them."""
    present = set(file_names)
    missing = [n for n in hf_names.transformers_names(diff.missing) if n not in present]
    unexpected = [n for n in hf_names.transformers_names(diff.unexpected) if n in present]
    mismatched = [(hf_names.transformers_names([k])[0], got, want) for k, got, want in diff.mismatched]
    return ShapeDiff(missing, unexpected, mismatched)


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _fit_to_model(clip: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Harmless layout differences open_clip itself tolerates."""
    expected = clip.state_dict()
    if "text_projection" in state and "text_projection" not in expected and hasattr(clip, "text"):
        # CLIP-layout text tower for a custom-text architecture: move it under `text.`
        from clipsan.openclip import open_clip

        state = open_clip.model.convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):  # scalar vs shape-[1] parameter
        if key in state and key in expected and state[key].shape != expected[key].shape and state[key].numel() == expected[key].numel():
            state = {**state, key: state[key].reshape(expected[key].shape)}
    return state


# --------------------------------------------------------------------------- saving


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=header)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
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
