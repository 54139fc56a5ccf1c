"""Which architecture, and which activation, a checkpoint is built with — never guessed silently.

Architecture: --arch; else the checkpoint's own config (config.json, open_clip_config.json);
else clipsan's metadata (`clipsan.arch` + `clipsan.model_cfg`); else the open_clip config
with exactly these weights' names and shapes (a transformers file with no such config:
a config read from the shapes, with its assumptions stated).

Activation (QuickGELU for OpenAI-trained weights, GELU otherwise; names and shapes cannot
tell them apart): from the same config or metadata; else the layout's origin (the
original clip package's keys, a CleanCLIP/BadCLIP checkpoint: QuickGELU; a transformers
file: transformers' default QuickGELU, with a warning); else GELU, open_clip's default,
with a warning naming the --arch that overrides it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsan.checkpoints.arch_inference import match_arch
from clipsan.checkpoints.base import TRANSFORMERS_FILE, Checkpoint
from clipsan.errors import UserError
from clipsan.models.registry import arch_with_activation, is_sigmoid_config, known_arch, model_config, register_model_config, uses_quick_gelu

META_ARCH = "clipsan.arch"
META_MODEL_CFG = "clipsan.model_cfg"
META_PREPROCESS_CFG = "clipsan.preprocess_cfg"
META_ACTIVATION = "clipsan.activation"


@dataclass
class ArchChoice:
    arch: str
    source: str  # flag | config.json | open_clip_config.json | metadata | inferred | shapes
    alternatives: tuple[str, ...] = ()  # other architectures these weights' shapes fit
    activation_source: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def activation_name(quick_gelu: bool) -> str:
    return "quick_gelu" if quick_gelu else "gelu"


def resolve_arch(checkpoint: Checkpoint, flag: str | None) -> ArchChoice:
    if flag:
        return ArchChoice(known_arch(flag), "flag", activation_source=f"--arch {flag}")
    if checkpoint.model_cfg is not None:
        arch = register_model_config(checkpoint.arch_hint or checkpoint.path.name, checkpoint.model_cfg)
        return ArchChoice(arch, checkpoint.cfg_source or "config", activation_source=checkpoint.activation_source or checkpoint.cfg_source or "")
    from_metadata = _arch_from_metadata(checkpoint.path, checkpoint.metadata)
    if from_metadata:
        return ArchChoice(from_metadata, "metadata", activation_source=f"metadata {META_MODEL_CFG}")
    return _inferred(checkpoint)


def _inferred(checkpoint: Checkpoint) -> ArchChoice:
    shapes = {k: tuple(v.shape) for k, v in checkpoint.tensors.items()}
    quick = checkpoint.origin_quick_gelu
    try:
        found = match_arch(shapes, prefer_quickgelu=bool(quick))
    except UserError as err:
        if checkpoint.fallback_cfg is None:
            raise UserError(f"{checkpoint.path}: {err}") from None
        cfg, assumed = checkpoint.fallback_cfg()
        arch = register_model_config(checkpoint.arch_hint or "transformers-clip", cfg)
        warning = (
            f"{checkpoint.path}: no config.json, and no known architecture has these shapes: architecture read from the shapes, "
            f"assuming {'; '.join(assumed)}; pass the folder with its config.json to use its own values"
        )
        return ArchChoice(arch, "shapes", activation_source=checkpoint.origin or "", warnings=[warning])
    if is_sigmoid_config(model_config(found.arch)):  # SigLIP's configs state their activations; no QuickGELU twin
        return ArchChoice(found.arch, "inferred", found.alternatives, f"{found.arch}'s config (SigLIP)")
    if quick is None:
        arch = arch_with_activation(found.arch, False)
        warning = (
            f"{checkpoint.path}: the activation is not recorded and the weights cannot tell: assumed gelu (open_clip's default); "
            f"if these are OpenAI-trained weights (QuickGELU), pass --arch {_twin(arch)}"
        )
        return ArchChoice(arch, "inferred", _others(found, arch), "default gelu (not recorded)", warnings=[warning])
    arch = arch_with_activation(found.arch, quick)
    choice = ArchChoice(arch, "inferred", _others(found, arch), checkpoint.origin or "")
    message = f"{checkpoint.path}: activation {activation_name(quick)} from {checkpoint.origin}; pass --arch {_twin(arch)} for {activation_name(not quick)}"
    # A transformers file's activation is transformers' default, not evidence: that is a warning.
    (choice.warnings if checkpoint.layout == TRANSFORMERS_FILE else choice.notes).append(message)
    return choice


def _others(found, chosen: str) -> tuple[str, ...]:
    return tuple(name for name in (found.arch, *found.alternatives) if name != chosen)


def _twin(arch: str) -> str:
    """The --arch name that selects the other activation."""
    cfg = model_config(arch) or {}
    return arch.removesuffix("-quickgelu") if uses_quick_gelu(cfg) else f"{arch}-quickgelu"


def _arch_from_metadata(path: Path, metadata: dict[str, str]) -> str | None:
    """`clipsan.arch`, registering the embedded config if this process does not know it."""
    name = metadata.get(META_ARCH)
    if not name:
        return None
    cfg_text = metadata.get(META_MODEL_CFG)
    known = model_config(name)
    if cfg_text:
        cfg = json_field(path, META_MODEL_CFG, cfg_text)
        if known != cfg:
            return register_model_config(name, cfg)
    return name if known is not None else None


def preprocess_from_metadata(path: Path, metadata: dict[str, str]) -> dict[str, Any] | None:
    text = metadata.get(META_PREPROCESS_CFG)
    return json_field(path, META_PREPROCESS_CFG, text) if text else None


def json_field(path: Path, key: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: metadata {key} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: metadata {key} should be a JSON object")
    return value
