"""Writing a model back in the layout its input came in (`--out-format`).

* `safetensors`: one file, open_clip names, clipsan's metadata (arch, config with the
  activation, normalisation, provenance).
* `hf`: a folder `transformers.CLIPModel.from_pretrained(OUT)` (`SiglipModel`, `Siglip2Model`)
  loads: config.json (the input's, with every computation field rewritten from the model,
  hidden_act included), model.safetensors (float32, transformers names, clipsan's metadata),
  and the input's tokenizer/processor files (CLIP's BPE and CLIP's image processor settings
  when it had none; a SigLIP model's own tokenizer file and SigLIP's image processor settings).
* `open_clip`: a hub folder: open_clip_config.json (quick_gelu always stated) +
  open_clip_model.safetensors, and the input's tokenizer/processor files.
* A SigLIP model's tokenizer file goes with it in every format: into the folder, or beside
  the safetensors file as ``<stem>.<tokenizer file>``, recorded in its metadata.
* `auto`: as the input came (a transformers weights file alone comes back as a folder),
  except that an --out ending in `.safetensors` means that file.

The plan is made before training, so a bad --out fails at once; folders are written
next to OUT and renamed into place, so OUT is never half-written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipsan.atomic import atomic_write_bytes, fsync_dir, temporary_name, write_errors, write_json
from clipsan.checkpoints import hf, hf_config, hf_names, open_clip_dir, siglip_config, siglip_names, tokenizer_files
from clipsan.checkpoints.base import OPEN_CLIP, TRANSFORMERS, TRANSFORMERS_FILE, Checkpoint
from clipsan.checkpoints.tensors import read_metadata
from clipsan.errors import UserError
from clipsan.models.registry import is_sigmoid_config

SAFETENSORS, HF, OPEN_CLIP_FORMAT = "safetensors", "hf", "open_clip"
OUT_FORMATS = ("auto", SAFETENSORS, HF, OPEN_CLIP_FORMAT)
AS_INPUT = {TRANSFORMERS: HF, TRANSFORMERS_FILE: HF, OPEN_CLIP: OPEN_CLIP_FORMAT}
CARRIED = (*tokenizer_files.TOKENIZER_FILES, *tokenizer_files.PROCESSOR_FILES)
CARRIED_SIGLIP = (*tokenizer_files.SIGLIP_TOKENIZER_FILES, *tokenizer_files.PROCESSOR_FILES)


@dataclass(frozen=True)
class OutputPlan:
    format: str  # safetensors | hf | open_clip
    path: Path  # a file for safetensors, a folder otherwise


def plan_output(out_format: str, out: str | None, default: Path, source: Checkpoint, model_cfg: dict[str, Any], arch: str) -> OutputPlan:
    """Where and how the model will be written; refuses a plan that cannot work (exit 2) before any training."""
    if out_format not in OUT_FORMATS:
        raise UserError(f"--out-format {out_format}: expected one of {', '.join(OUT_FORMATS)}")
    fmt = out_format
    if fmt == "auto":
        fmt = SAFETENSORS if out and out.endswith(".safetensors") else AS_INPUT.get(source.layout, SAFETENSORS)
    if fmt != SAFETENSORS and out and out.endswith(".safetensors"):
        raise UserError(f"--out {out}: --out-format {fmt} writes a folder, not a .safetensors file")
    path = Path(out) if out else (default.with_suffix(".safetensors") if fmt == SAFETENSORS else default)
    if fmt == HF:
        sigmoid = is_sigmoid_config(model_cfg)
        reason = siglip_config.representable(model_cfg) if sigmoid else hf_config.representable(model_cfg)
        if reason:
            raise UserError(f"--out-format hf: {arch} cannot be written as a transformers {'SiglipModel' if sigmoid else 'CLIPModel'}: {reason}")
    if fmt == SAFETENSORS and path.is_dir():
        raise UserError(f"--out {path}: is a folder; --out-format safetensors writes a file")
    if fmt != SAFETENSORS:
        _check_folder_target(path)
    return OutputPlan(fmt, path)


def _check_folder_target(path: Path) -> None:
    """OUT may be new, an empty folder, or a folder clipsan wrote before (replaced); nothing else is overwritten."""
    if path.is_file():
        raise UserError(f"--out {path}: is a file; this --out-format writes a folder")
    if not path.is_dir() or not any(path.iterdir()):
        return
    weights = [path / hf.WEIGHTS_OUT, path / open_clip_dir.WEIGHTS_OUT]
    if not any(w.is_file() and "clipsan.version" in _metadata_or_empty(w) for w in weights):
        raise UserError(f"--out {path}: folder exists and is not a model clipsan wrote; choose another --out or empty it")


def _metadata_or_empty(path: Path) -> dict[str, str]:
    try:
        return read_metadata(path)
    except UserError:
        return {}


def write_output(plan: OutputPlan, model, source: Checkpoint | None, metadata: dict[str, Any]) -> Path:
    from clipsan.checkpoints.saving import model_header, save_model, unshared_cpu_tensors, write_safetensors

    tokenizer = model.file_tokenizer
    if plan.format == SAFETENSORS:
        if tokenizer is not None:  # beside the file, named after it; the metadata says which and how it tokenises
            beside = f"{plan.path.stem}.{tokenizer.file_name}"
            with write_errors(plan.path.parent):
                plan.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(plan.path.parent / beside, tokenizer.data)
            metadata = {**metadata, tokenizer_files.META_TOKENIZER: tokenizer_files.tokenizer_record(tokenizer, beside)}
        return save_model(model, plan.path, metadata)
    header = model_header(model, metadata)
    carried_from = source.folder if source is not None and source.layout in (TRANSFORMERS, OPEN_CLIP) else None
    with _folder_swap(plan.path) as folder:
        state = unshared_cpu_tensors(model.clip.state_dict())
        if plan.format == HF:
            base = source.source_config if source is not None and source.layout == TRANSFORMERS else None
            if model.is_sigmoid:
                family = (base or {}).get("model_type") if (base or {}).get("model_type") in siglip_config.FAMILIES else "siglip"
                write_json(folder / hf.CONFIG, siglip_config.config_from_model(model, base, family))
                write_safetensors(siglip_names.to_transformers(state, siglip2=family == "siglip2"), folder / hf.WEIGHTS_OUT, header)
            else:
                write_json(folder / hf.CONFIG, hf_config.config_from_model_cfg(model.model_cfg, base))
                write_safetensors(hf_names.to_transformers(state), folder / hf.WEIGHTS_OUT, header)
        else:
            base = source.source_config if source is not None and source.layout == OPEN_CLIP else {}
            model_cfg = {**model.model_cfg, "quick_gelu": bool(model.model_cfg.get("quick_gelu", False))}
            write_json(folder / open_clip_dir.CONFIG, {**base, "model_cfg": model_cfg, "preprocess_cfg": model.preprocess_cfg})
            write_safetensors(state, folder / open_clip_dir.WEIGHTS_OUT, header)
        carried = _carry(carried_from, folder, CARRIED_SIGLIP if model.is_sigmoid else CARRIED)
        if tokenizer is not None and tokenizer.file_name not in carried:
            atomic_write_bytes(folder / tokenizer.file_name, tokenizer.data)
        elif plan.format == HF and not model.is_sigmoid and not carried & set(tokenizer_files.TOKENIZER_FILES):
            tokenizer_files.write_files(folder, model.context_length)
        if plan.format == HF and "preprocessor_config.json" not in carried:
            write_json(folder / "preprocessor_config.json", _siglip_image_processor(model) if model.is_sigmoid else _image_processor(model))
    return plan.path


def _carry(source_folder: Path | None, folder: Path, names: tuple[str, ...]) -> set[str]:
    """Copy the input folder's tokenizer and processor files (never its weights)."""
    carried = set()
    for name in names if source_folder is not None else ():
        if (source_folder / name).is_file():
            with write_errors(folder / name):
                shutil.copyfile(source_folder / name, folder / name)
            carried.add(name)
    return carried


def _image_processor(model) -> dict[str, Any]:
    """transformers' CLIPImageProcessor settings for this model (resize shorter side, centre crop, normalise)."""
    size = int(model.image_size)
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(model.preprocess_cfg["mean"]),
        "image_std": list(model.preprocess_cfg["std"]),
        "do_convert_rgb": True,
    }


def _siglip_image_processor(model) -> dict[str, Any]:
    """transformers' SiglipImageProcessor settings for this model (resize to the square input, normalise)."""
    size = int(model.image_size)
    return {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(model.preprocess_cfg["mean"]),
        "image_std": list(model.preprocess_cfg["std"]),
    }


class _folder_swap:
    """Write into a hidden sibling folder; on success rename it to OUT (replacing an earlier output).

    A failed write removes the hidden folder and leaves an earlier OUT as it was; its message names
    the file under OUT, where the user will look for it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = temporary_name(path)
        self.old = temporary_name(path, "old")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        with write_errors(self.path):
            self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, UserError):
                raise UserError(str(exc).replace(str(self.tmp), str(self.path))) from None
            return
        with write_errors(self.path):
            fsync_dir(self.tmp)
            if self.path.exists():
                os.replace(self.path, self.old)
            try:
                os.replace(self.tmp, self.path)
            except OSError:
                if self.old.exists():
                    os.replace(self.old, self.path)  # the earlier output stays
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        shutil.rmtree(self.old, ignore_errors=True)
        fsync_dir(self.path.parent)
