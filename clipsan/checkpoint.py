"""Safe checkpoint loading and saving.

Untrusted files are never unpickled: safetensors are read as data, and `.pt/.pth/.bin`
go through `torch.load(weights_only=True)`, which refuses any pickle that would
call arbitrary code. What clipsan writes is safetensors with metadata that makes
the file self-describing (architecture, config, normalisation, provenance).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from clipsan import __version__
from clipsan.engine.rundir import fsync_dir, fsync_file
from clipsan.errors import UserError
from clipsan.models import (
    ClipModel,
    compare_shapes,
    create_model,
    match_arch,
    model_config,
    register_model_config,
)

LOCAL_DIR_PREFIX = "local-dir:"
TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}
# Keys the original `clip` package keeps next to the weights (JIT archives' attributes).
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Where training scripts nest the weights: CleanCLIP / open_clip {"state_dict": ...}, others.
NESTED_WEIGHT_KEYS = ("state_dict", "model", "state_dict_ema")
LOCAL_DIR_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
META_ARCH = "clipsan.arch"
META_MODEL_CFG = "clipsan.model_cfg"
META_PREPROCESS_CFG = "clipsan.preprocess_cfg"


@dataclass
class LoadedModel:
    model: ClipModel
    arch: str
    arch_source: str  # "flag" | "metadata" | "inferred"
    arch_alternatives: tuple[str, ...]  # same weights' shapes fit these archs too
    path: Path  # the weights file
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)

    def describe_arch(self) -> str:
        """E.g. 'RN50 (inferred; also matches: RN50-quickgelu)'."""
        text = f"{self.arch} ({self.arch_source}"
        if self.arch_alternatives:
            text += f"; also matches: {', '.join(self.arch_alternatives)}"
        return text + ")"


@dataclass
class _RawWeights:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    openai_layout: bool  # had the original clip package's extra keys


# --------------------------------------------------------------------------- loading


def load_model(spec: str, arch: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load MODEL as given on the command line: a file or `local-dir:FOLDER`."""
    if spec.startswith(LOCAL_DIR_PREFIX):
        return _load_local_dir(spec[len(LOCAL_DIR_PREFIX) :], arch, device)
    path = _existing_file(spec)
    raw = _read_weights(path)
    chosen, source, alternatives = _resolve_arch(path, raw, arch)
    model = _build_and_fill(path, chosen, source, raw, _preprocess_from_metadata(path, raw.metadata))
    return LoadedModel(model.to(device), chosen, source, alternatives, path, sha256_file(path), raw.metadata)


def _existing_file(spec: str) -> Path:
    path = Path(spec)
    if path.is_dir():
        hint = ""
        if (path / "open_clip_config.json").is_file():
            hint = f"; for an open_clip folder pass {LOCAL_DIR_PREFIX}{spec}"
        raise UserError(f"{spec}: is a directory, expected a .safetensors or .pt file{hint}")
    if not path.is_file():
        raise UserError(f"{spec}: no such file")
    return path


def _read_weights(path: Path) -> _RawWeights:
    if _looks_like_safetensors(path):
        tensors, metadata = _read_safetensors(path), read_metadata(path)
        return _normalise(path, tensors, metadata)
    return _normalise(path, _read_torch_file(path), {})


def _looks_like_safetensors(path: Path) -> bool:
    if path.suffix.lower() == ".safetensors":
        return True
    if path.suffix.lower() in TORCH_SUFFIXES:
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    # torch.save writes a zip (PK..) or, in the legacy format, a pickle (0x80 ...).
    return not (head.startswith(b"PK") or head.startswith(b"\x80"))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise UserError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def _read_torch_file(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(_torch_load_refusal(path, err)) from None


def _torch_load_refusal(path: Path, err: BaseException) -> str:
    text = str(err)
    unsafe_global = re.search(r"GLOBAL\s+([\w.]+)", text)
    if unsafe_global:
        return f"{path}: refusing to unpickle: it needs arbitrary code (GLOBAL {unsafe_global.group(1)}); convert it to safetensors in a trusted environment"
    if "TorchScript" in text:
        return f"{path}: refusing to load a TorchScript archive (it contains code); convert it to a safetensors state dict in a trusted environment"
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = reason.group(1).strip() if reason else _first_line(err)
    return f"{path}: not a PyTorch state dict loadable without running code ({detail})"


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


def _normalise(path: Path, obj: Any, metadata: dict[str, str]) -> _RawWeights:
    """Reduce what a file holds to open_clip key names: unwrap training-script nesting,
    strip DDP's `module.` prefix, drop the OpenAI package's non-weight entries."""
    state = _unwrap_nested(path, obj)
    openai_layout = any(k in state for k in OPENAI_EXTRA_KEYS)
    state = {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(f"{path}: expected a state dict of tensors, {not_tensors[0]!r} is a {type(state[not_tensors[0]]).__name__}")
    if not state:
        raise UserError(f"{path}: holds no weights")
    return _RawWeights(state, metadata, openai_layout)


def _unwrap_nested(path: Path, obj: Any) -> dict[str, Any]:
    for _ in range(3):  # {"state_dict": {...}} and at most a couple more levels
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in NESTED_WEIGHT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    keys = f" (top-level keys: {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, Mapping) else ""
    raise UserError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}{keys}")


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _resolve_arch(path: Path, raw: _RawWeights, arch: str | None) -> tuple[str, str, tuple[str, ...]]:
    if arch:
        return arch, "flag", ()
    from_metadata = _arch_from_metadata(path, raw.metadata)
    if from_metadata:
        return from_metadata, "metadata", ()
    try:
        # The original clip package's weights were trained with QuickGELU: among
        # shape-identical twins, its layout is evidence for the -quickgelu one.
        found = match_arch(_shapes(raw.tensors), prefer_quickgelu=raw.openai_layout)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    return found.arch, "inferred", found.alternatives


def _arch_from_metadata(path: Path, metadata: Mapping[str, str]) -> str | None:
    """`clipsan.arch`, registering the embedded config if this process does not know it."""
    name = metadata.get(META_ARCH)
    if not name:
        return None
    cfg_text = metadata.get(META_MODEL_CFG)
    known = model_config(name)
    if cfg_text:
        cfg = _json_field(path, META_MODEL_CFG, cfg_text)
        if known != cfg:
            return register_model_config(name, cfg)
    return name if known is not None else None


def _json_field(path: Path, key: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: metadata {key} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: metadata {key} should be a JSON object")
    return value


def _preprocess_from_metadata(path: Path, metadata: Mapping[str, str]) -> dict[str, Any] | None:
    text = metadata.get(META_PREPROCESS_CFG)
    return _json_field(path, META_PREPROCESS_CFG, text) if text else None


def _build_and_fill(path: Path, arch: str, source: str, raw: _RawWeights, preprocess_cfg: Mapping[str, Any] | None) -> ClipModel:
    try:
        model = create_model(arch, device="cpu", preprocess_cfg=preprocess_cfg)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    state = _fit_to_model(model.clip, raw.tensors)
    expected = _shapes(model.clip.state_dict())
    diff = compare_shapes(_shapes(state), expected)
    if diff.size:
        origin = {"flag": "--arch", "metadata": f"metadata {META_ARCH}", "inferred": "inferred"}[source]
        raise UserError(f"{path}: weights do not fit architecture {arch} ({origin}): {diff.describe(arch)}")
    model.clip.load_state_dict(state, strict=True)
    return model


def _fit_to_model(clip: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Harmless layout differences open_clip itself tolerates."""
    expected = clip.state_dict()
    if "text_projection" in state and "text_projection" not in expected and hasattr(clip, "text"):
        # CLIP-layout text tower for a custom-text architecture: move it under `text.`
        from open_clip.model import convert_to_custom_text_state_dict

        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):  # scalar vs shape-[1] parameter
        if key in state and key in expected and state[key].shape != expected[key].shape and state[key].numel() == expected[key].numel():
            state = {**state, key: state[key].reshape(expected[key].shape)}
    return state


def _load_local_dir(folder_text: str, arch: str | None, device: str | torch.device) -> LoadedModel:
    spec = LOCAL_DIR_PREFIX + folder_text
    folder = Path(folder_text)
    if not folder.is_dir():
        raise UserError(f"{spec}: no such directory")
    config_path = folder / "open_clip_config.json"
    if not config_path.is_file():
        raise UserError(f"{config_path}: missing (an open_clip folder has open_clip_config.json)")
    config = _read_json(config_path)
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise UserError(f"{config_path}: expected a 'model_cfg' object")
    weights = next((folder / n for n in LOCAL_DIR_WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise UserError(f"{spec}: no weights file (expected one of {', '.join(LOCAL_DIR_WEIGHT_FILES)})")
    source = "flag" if arch else "metadata"
    if not arch:
        arch = register_model_config(folder.resolve().name, model_cfg)
    raw = _read_weights(weights)
    preprocess = config.get("preprocess_cfg") if isinstance(config.get("preprocess_cfg"), dict) else None
    model = _build_and_fill(weights, arch, source, raw, preprocess)
    return LoadedModel(model.to(device), arch, source, (), weights, sha256_file(weights), raw.metadata)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({_first_line(err)})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


# --------------------------------------------------------------------------- saving


def save_model(model: ClipModel, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write `model.clip`'s weights as safetensors, atomically (temp file, fsync, rename).

    Metadata always carries the architecture, its config and normalisation (so the file
    loads in any process), and the clipsan version; callers add command, method,
    source sha256, ... Non-string values are stored as JSON.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    header.update(
        {
            "format": "pt",
            META_ARCH: model.arch,
            "clipsan.version": __version__,
            META_MODEL_CFG: json.dumps(model.model_cfg, sort_keys=True),
            META_PREPROCESS_CFG: json.dumps(model.preprocess_cfg, sort_keys=True),
        }
    )
    tensors = _unshared_cpu_tensors(model.clip.state_dict())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=header)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def _unshared_cpu_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


# --------------------------------------------------------------------------- small helpers


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """A safetensors file's metadata (header only; the weights are not read)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as err:
        raise UserError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
