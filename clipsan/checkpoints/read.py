"""MODEL as given on the command line -> the reader of its layout."""

from __future__ import annotations

from pathlib import Path

from clipsan.checkpoints import hf, open_clip_dir
from clipsan.checkpoints.base import Checkpoint
from clipsan.checkpoints.state_dict import read_state_dict_file
from clipsan.errors import UserError

LOCAL_DIR_PREFIX = "local-dir:"


def read_checkpoint(spec: str) -> Checkpoint:
    """A file (any weights layout), a transformers or open_clip folder, or `local-dir:FOLDER` (open_clip's)."""
    if spec.startswith(LOCAL_DIR_PREFIX):
        folder = Path(spec[len(LOCAL_DIR_PREFIX) :])
        if not folder.is_dir():
            raise UserError(f"{spec}: no such directory")
        return open_clip_dir.read_folder(folder, spec)
    path = Path(spec)
    if path.is_dir():
        # A hub snapshot may hold both layouts: open_clip's config states open_clip's own settings exactly.
        if open_clip_dir.is_folder(path):
            return open_clip_dir.read_folder(path, spec)
        if hf.is_folder(path):
            return hf.read_folder(path)
        if (path / open_clip_dir.CONFIG).is_file():
            return open_clip_dir.read_folder(path, spec)  # says which weights file is missing
        raise UserError(
            f"{spec}: a folder, but neither a transformers CLIP folder ({hf.CONFIG} + model.safetensors) "
            f"nor an open_clip one ({open_clip_dir.CONFIG} + {open_clip_dir.WEIGHTS_OUT})"
        )
    if not path.is_file():
        raise UserError(f"{spec}: no such file")
    return read_state_dict_file(path)
