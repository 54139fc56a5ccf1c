"""What a weights file is, read from its first bytes (never from its suffix).

A valid safetensors file named `.pt` is still safetensors, and a pickle named
`.safetensors` is still a pickle: the suffix is what a user typed, the bytes are
what the file is.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

SAFETENSORS, TORCH_ZIP, TORCHSCRIPT, PICKLE = "safetensors", "torch-zip", "torchscript", "pickle"

# The safetensors header is a JSON object preceded by its length; real headers are far below this.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def file_format(path: Path) -> str | None:
    """SAFETENSORS, TORCH_ZIP, TORCHSCRIPT, PICKLE, or None when the bytes are none of them."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= min(size - 8, MAX_SAFETENSORS_HEADER) and head[8:9] == b"{":
            return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return TORCHSCRIPT if _is_torchscript(path) else TORCH_ZIP
    # torch.save's legacy format and plain pickles start with the PROTO opcode (protocol 2-5).
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return PICKLE
    return None


def _is_torchscript(path: Path) -> bool:
    """torch.jit.save archives carry their code (`code/`, `constants.pkl`) next to the data."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # zipfile raises many kinds on a damaged archive (UnicodeDecodeError on a name, ...)
        return False  # torch.load will say what is wrong with it
    return any("/code/" in name or name.endswith("/constants.pkl") for name in names)
