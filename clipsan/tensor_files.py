"""safetensors files with the same bytes for the same tensors and metadata, in every process.

safetensors keeps the metadata in a Rust HashMap and writes it in that map's order, which is
seeded at random per map: the same model written twice gets two sha256s. An intake pipeline
that hashes outputs (and clipsan's own "a resumed run equals an uninterrupted one") needs one,
so the metadata is rewritten in sorted order; the header keeps its length, so the tensor
offsets stay as written.
"""

from __future__ import annotations

import json
import os
import struct

import torch
from safetensors.torch import save, save_file


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with the metadata in sorted order."""
    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        fh.seek(8)
        header = _sorted_header(fh.read(size))
        fh.seek(8)
        fh.write(header)


def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save`` with the metadata in sorted order."""
    data = save(tensors, metadata=metadata)
    size = struct.unpack("<Q", data[:8])[0]
    return data[:8] + _sorted_header(data[8 : 8 + size]) + data[8 + size :]


def _sorted_header(raw: bytes) -> bytes:
    text = raw.rstrip(b" ").decode("utf-8")
    header = json.loads(text)
    if _dump(header) != text or "__metadata__" not in header:
        return raw  # not the serialisation this module knows how to repeat: left as written
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    return _dump(header).encode("utf-8").ljust(len(raw), b" ")


def _dump(header: dict) -> str:
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False)
