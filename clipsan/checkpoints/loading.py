"""Loading any checkpoint layout people download into a ClipModel, saying where each fact came from.

Untrusted files are never unpickled: safetensors are read as data, and PyTorch files go
through ``torch.load(weights_only=True)``, which refuses any pickle that would call
arbitrary code (``clipsan.checkpoints.tensors``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipsan.checkpoints import hf_names, siglip_names, tokenizer_files
from clipsan.checkpoints.arch_inference import ShapeDiff, compare_shapes
from clipsan.checkpoints.base import Checkpoint, layout_name
from clipsan.checkpoints.read import read_checkpoint
from clipsan.checkpoints.resolve import META_ARCH, ArchChoice, activation_name, preprocess_from_metadata, resolve_arch
from clipsan.errors import UserError
from clipsan.models import ClipModel, create_model
from clipsan.models.registry import uses_quick_gelu


@dataclass
class LoadedModel:
    model: ClipModel
    arch: str
    arch_source: str  # flag | metadata | inferred | shapes | config.json | open_clip_config.json
    arch_alternatives: tuple[str, ...]  # same weights' shapes fit these archs too
    path: Path  # what MODEL named: the weights file, or the folder
    sha256: str  # of the weights file (of the shards in order, when sharded)
    metadata: dict[str, str] = field(default_factory=dict)
    layout: str = "safetensors"  # clipsan.checkpoints.base: the layout read
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

    def record(self) -> dict[str, str]:
        """What a run's config.json records of an input model."""
        return {"path": str(self.path), "sha256": self.sha256, "arch": self.arch}

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
        family = self.source.family if self.source is not None else "clip"
        notes(f"{role} {self.path}: {layout_name(self.layout, family)}; arch {self.describe_arch()}; activation {self.activation} ({self.activation_source})")
        for line in self.notes:
            notes(line)
        for line in self.warnings:
            notes(f"warning: {line}")


def load_model(spec: str, arch: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load MODEL as given on the command line: a file, a folder, or `local-dir:FOLDER`."""
    checkpoint = read_checkpoint(spec)
    choice = resolve_arch(checkpoint, arch)
    model = _build_and_fill(checkpoint, choice)
    checkpoint.tensors = {}  # the model holds the weights now
    if model.is_sigmoid:
        model.file_tokenizer = _siglip_tokenizer(checkpoint, model)
        checkpoint.notes.append(f"tokenizer: {model.file_tokenizer.source} ({model.file_tokenizer.style}), the checkpoint's own")
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
            diff = _in_file_names(diff, checkpoint.file_names, checkpoint.family)
        origin = {"flag": "--arch", "metadata": f"metadata {META_ARCH}", "inferred": "inferred"}.get(choice.source, choice.source)
        raise UserError(f"{path}: weights do not fit architecture {arch} ({origin}): {diff.describe(arch)}")
    model.clip.load_state_dict(state, strict=True)
    return model


def _siglip_tokenizer(checkpoint: Checkpoint, model: ClipModel):
    """A SigLIP model's tokenizer: its folder's (read with the layout), else the file beside its weights."""
    tokenizer = checkpoint.tokenizer
    if tokenizer is None:
        clean = ((model.model_cfg.get("text_cfg") or {}).get("tokenizer_kwargs") or {}).get("clean", tokenizer_files.OPEN_CLIP_DEFAULT_CLEAN)
        tokenizer = tokenizer_files.tokenizer_beside(checkpoint.path, checkpoint.metadata, model.context_length, clean)
    tokenizer.context_length = model.context_length
    return tokenizer_files.fit_to_model(tokenizer, int(model.model_cfg["text_cfg"]["vocab_size"]))


def _in_file_names(diff: ShapeDiff, file_names: tuple[str, ...], family: str = "clip") -> ShapeDiff:
    """The difference under the file's own (transformers) names, so the user can find them."""
    present = set(file_names)
    names = hf_names if family == "clip" else siglip_names
    missing = [n for n in names.transformers_names(diff.missing) if n not in present]
    unexpected = [n for n in names.transformers_names(diff.unexpected) if n in present]
    mismatched = [(names.transformers_names([k])[0], got, want) for k, got, want in diff.mismatched]
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
