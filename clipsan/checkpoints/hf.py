"""transformers CLIPModel / SiglipModel / Siglip2Model checkpoints: a folder (config.json + weights, one
file or shards) or its weights alone.

Reading: config.json says the family (`model_type`), the architecture and the activation (`hidden_act`); weights are
`model.safetensors`, shards listed by `model.safetensors.index.json`, or `pytorch_model.bin`
(read with weights_only) and its sharded form. A weights file alone carries neither: its
architecture is matched against open_clip's configs by shape, else read from the shapes
with stated assumptions, and its activation is transformers' default (QuickGELU), with a
warning. A SigLIP checkpoint's tokenizer is the one in its folder (the weights file's folder, for
a file alone). Writing: a folder `CLIPModel.from_pretrained(OUT)` (`SiglipModel`, `Siglip2Model`) loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipsan.checkpoints import hf_config, hf_names, siglip_config, siglip_names, tokenizer_files
from clipsan.checkpoints.base import TRANSFORMERS, TRANSFORMERS_FILE, Checkpoint, read_json
from clipsan.checkpoints.tensors import as_float32, check_finite, read_weights_file, sha256_files
from clipsan.errors import UserError

CONFIG = "config.json"
# Weight files in the order transformers prefers them; an index lists shards.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
WEIGHTS_OUT = "model.safetensors"
TOP_NAMES = {"vision_model", "text_model", "visual_projection"}
# Names that only other families' towers have, and what they are.
FOREIGN_NAMES = (
    ("text_model.embeddings.word_embeddings.", "a BERT/RoBERTa text tower (ALIGN, AltCLIP, Chinese-CLIP)"),
    ("text_model.encoder.layer.", "a BERT/RoBERTa text tower (ALIGN, AltCLIP, Chinese-CLIP)"),
    ("vision_model.embeddings.convolution.", "an EfficientNet image tower (ALIGN)"),
    ("vision_model.encoder.blocks.", "an EfficientNet image tower (ALIGN)"),
)
LONE_FILE_ACTIVATION = "transformers' CLIPConfig default (a weights file without its config.json records none)"
SIGLIP_FAMILIES = siglip_config.FAMILIES
MODEL_CLASS = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}


def has_transformers_names(tensors: dict[str, torch.Tensor]) -> bool:
    return any(name.split(".")[0] in TOP_NAMES for name in tensors)


def is_folder(folder: Path) -> bool:
    return (folder / CONFIG).is_file()


# --------------------------------------------------------------------------- reading


def read_folder(folder: Path) -> Checkpoint:
    config_path = folder / CONFIG
    config = read_json(config_path)
    family = config.get("model_type")
    if family in SIGLIP_FAMILIES:
        model_cfg = siglip_config.model_cfg_from_config(config_path, config)
        stated = [f"{tower} {(config.get(f'{tower}_config') or {}).get('hidden_act') or 'default gelu_pytorch_tanh'}" for tower in ("vision", "text")]
        activation_source = f"{CONFIG} hidden_act ({', '.join(stated)})"
        tokenizer_note = None
    else:
        model_cfg = hf_config.model_cfg_from_config(config_path, config)  # refuses other families before reading weights
        _, activation_source = hf_config.activation_of(config_path, config)
        tokenizer_note = tokenizer_files.check_folder(folder)
    files = _weight_files(folder)
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        obj, _ = read_weights_file(file)
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UserError(f"{file}: expected a state dict of tensors")
        check_finite(file, obj)
        tensors.update(obj)
    metadata = _safetensors_metadata(files[0])
    checkpoint = _converted(folder, files, tensors, metadata, TRANSFORMERS, family=family if family in SIGLIP_FAMILIES else "clip")
    checkpoint.model_cfg, checkpoint.cfg_source, checkpoint.activation_source = model_cfg, CONFIG, activation_source
    checkpoint.preprocess_cfg = _preprocess_cfg(folder)
    checkpoint.arch_hint = metadata.get("clipsan.arch") or folder.resolve().name  # clipsan's own output keeps its name
    checkpoint.folder, checkpoint.source_config = folder, config
    if family in SIGLIP_FAMILIES:
        context = int(model_cfg["text_cfg"]["context_length"])
        checkpoint.tokenizer = tokenizer_files.siglip_tokenizer(folder, context, family)
    if tokenizer_note:
        checkpoint.notes.append(tokenizer_note)
    return checkpoint


def lone_file_checkpoint(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], sha256: str, upcast: list[str]) -> Checkpoint:
    if siglip_names.is_siglip(tensors):
        return _lone_siglip_file(path, tensors, metadata, sha256, upcast)
    checkpoint = _converted(path, (path,), tensors, metadata, TRANSFORMERS_FILE, sha256=sha256, upcast=upcast)
    checkpoint.origin_quick_gelu, checkpoint.origin = True, LONE_FILE_ACTIVATION
    checkpoint.arch_hint = _lone_file_name(path)
    shapes = {k: tuple(v.shape) for k, v in checkpoint.tensors.items()}

    def from_shapes() -> tuple[dict[str, Any], list[str]]:
        try:
            config, assumed = hf_config.config_from_shapes(shapes)
        except KeyError as err:
            raise UserError(f"{path}: a transformers CLIP file without {hf_names.transformers_names([err.args[0]])[0]}") from None
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        return hf_config.model_cfg_from_config(path, config), assumed

    checkpoint.fallback_cfg = from_shapes
    return checkpoint


def _lone_siglip_file(path: Path, tensors, metadata, sha256: str, upcast: list[str]) -> Checkpoint:
    """A SiglipModel / Siglip2Model weights file without its config.json: sizes from the shapes, transformers'
    defaults for the rest (stated), the tokenizer from the file's folder."""
    family = "siglip2" if tensors[siglip_names.PATCH[0]].dim() == 2 else "siglip"
    checkpoint = _converted(path, (path,), tensors, metadata, TRANSFORMERS_FILE, sha256=sha256, upcast=upcast, family=family)
    try:
        config, assumed = siglip_config.config_from_shapes({k: tuple(v.shape) for k, v in checkpoint.tensors.items()}, family)
    except KeyError as err:
        raise UserError(f"{path}: a transformers SigLIP file without {siglip_names.transformers_names([err.args[0]])[0]}") from None
    checkpoint.model_cfg, checkpoint.cfg_source = siglip_config.model_cfg_from_config(path, config), "shapes"
    checkpoint.activation_source = f"transformers' {family} default gelu_pytorch_tanh (a weights file without its config.json records none)"
    checkpoint.arch_hint = _lone_file_name(path)
    checkpoint.warnings.append(
        f"{path}: no config.json: architecture read from the shapes, assuming {'; '.join(assumed)}; pass the folder with its config.json to use its own values"
    )
    context = int(checkpoint.model_cfg["text_cfg"]["context_length"])
    checkpoint.tokenizer = tokenizer_files.siglip_tokenizer(path.parent, context, family, for_file=path)
    return checkpoint


def _lone_file_name(path: Path) -> str:
    return path.resolve().parent.name if path.stem in ("model", "pytorch_model") else path.stem


def _converted(
    path: Path, files, tensors, metadata, layout: str, sha256: str | None = None, upcast: list[str] | None = None, family: str = "clip"
) -> Checkpoint:
    """transformers names -> open_clip's; refuses other families' towers and names the map does not know."""
    for marker, other in FOREIGN_NAMES:
        if any(name == marker or name.startswith(marker) for name in tensors):
            raise UserError(f"{path}: weights of {other}, not CLIP (found {marker.rstrip('.')}); {hf_config.UNSUPPORTED}")
    siglip = family in SIGLIP_FAMILIES
    if not siglip and siglip_names.is_siglip(tensors):
        raise UserError(f"{path}: SigLIP weights (logit_bias, attention-pooling head) under a CLIPModel config.json")
    if upcast is None:
        tensors, upcast = as_float32(tensors)
    names = siglip_names if siglip else hf_names
    state, unknown = names.to_open_clip(tensors)
    if unknown:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise UserError(f"{path}: {len(unknown)} weights that a transformers {MODEL_CLASS[family]} does not have ({shown})")
    checkpoint = Checkpoint(state, layout, path, tuple(files), sha256 or sha256_files(files), metadata, family=family)
    checkpoint.file_names = tuple(name for name in tensors if not names.IGNORED.match(name))
    if upcast:
        checkpoint.notes.append(f"{path}: {', '.join(upcast)} weights upcast to float32")
    return checkpoint


def _weight_files(folder: Path) -> tuple[Path, ...]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return _shards(path) if name.endswith(".index.json") else (path,)
    raise UserError(f"{folder}: a transformers folder without weights (expected one of {', '.join(WEIGHT_FILES)})")


def _shards(index_path: Path) -> tuple[Path, ...]:
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index_path}: expected a 'weight_map' object (tensor name -> shard file)")
    names = list(dict.fromkeys(str(v) for v in weight_map.values()))
    for name in names:
        if Path(name).name != name:  # a shard is a file of this folder, never a path elsewhere
            raise UserError(f"{index_path}: shard {name!r} is not a file name in the folder")
        if not (index_path.parent / name).is_file():
            raise UserError(f"{index_path}: shard {name} is missing")
    return tuple(index_path.parent / name for name in names)


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from clipsan.checkpoints.sniff import SAFETENSORS, file_format
    from clipsan.checkpoints.tensors import read_metadata

    return read_metadata(path) if file_format(path) == SAFETENSORS else {}


def _preprocess_cfg(folder: Path) -> dict[str, Any] | None:
    """Normalisation from the folder's image processor config, if it has one."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    config = read_json(path)
    mean, std = config.get("image_mean"), config.get("image_std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    return None
