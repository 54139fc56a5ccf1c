"""Reading weight files without running code, and the checks every checkpoint passes.

safetensors are read as data; PyTorch files go through `torch.load(weights_only=True)`,
which refuses any pickle that would call arbitrary code. Whatever the layout, weights
must be finite (a NaN/inf weight is bad input, never a model to scan or purify) and
are handed on as float32 (fp16/bf16 files are upcast).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from clipsan.checkpoints.sniff import PICKLE, SAFETENSORS, TORCH_ZIP, TORCHSCRIPT, file_format
from clipsan.errors import UserError


def read_weights_file(path: Path) -> tuple[Any, dict[str, str]]:
    """What the file holds (a tensor dict for safetensors, any allowed object for torch files) and its metadata."""
    kind = file_format(path)
    if kind == SAFETENSORS:
        return read_safetensors(path), read_metadata(path)
    if kind == TORCHSCRIPT:
        raise UserError(
            f"{path}: refusing to load a TorchScript archive (it contains code); in a trusted environment, "
            "torch.save(torch.jit.load(FILE).state_dict(), 'state.pt') gives a state dict clipsan reads (OpenAI's downloads: as QuickGELU)"
        )
    if kind in (TORCH_ZIP, PICKLE):
        return _read_torch_file(path), {}
    with open(path, "rb") as f:
        head = f.read(8)
    raise UserError(f"{path}: not a weights file clipsan can read: neither safetensors nor a PyTorch file (it starts with {head!r})")


def safetensors_names(path: Path) -> list[str] | None:
    """The tensor names of a safetensors file, from its header alone (None if it is not one)."""
    if file_format(path) != SAFETENSORS:
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except Exception as err:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(err)})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(err)})") from None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """A safetensors file's metadata (header only; the weights are not read)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as err:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(err)})") from None


def _read_torch_file(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A file object, not the path: torch.load would pick a reader by the suffix (.safetensors), not the bytes.
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(_torch_load_refusal(path, err)) from None


def _torch_load_refusal(path: Path, err: BaseException) -> str:
    text = str(err)
    unsafe_global = re.search(r"GLOBAL\s+([\w.]+)", text)
    if unsafe_global:
        return f"{path}: refusing to unpickle: it needs arbitrary code (GLOBAL {unsafe_global.group(1)}); convert it to safetensors in a trusted environment"
    reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = reason.group(1).strip() if reason else first_line(err)
    return f"{path}: not a PyTorch state dict loadable without running code ({detail})"


def first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


def check_finite(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse NaN/inf weights, naming the first tensor (in file order) that holds one."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"{path}: weight {name} holds {bad} NaN/inf value(s) of {tensor.numel()}; refusing a checkpoint with non-finite weights")


def as_float32(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Floating tensors as float32 (fp16/bf16 upcast: clipsan computes in fp32), and the dtypes that were upcast."""
    out: dict[str, torch.Tensor] = {}
    upcast: set[str] = set()
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            upcast.add(str(tensor.dtype).removeprefix("torch."))
            tensor = tensor.float()
        out[name] = tensor
    return out, sorted(upcast)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    return sha256_files([path], chunk_size)


def sha256_files(paths: Iterable[str | os.PathLike[str]], chunk_size: int = 1 << 20) -> str:
    """sha256 of the files' bytes one after the other (a sharded checkpoint's shards, in order)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                digest.update(chunk)
    return digest.hexdigest()
