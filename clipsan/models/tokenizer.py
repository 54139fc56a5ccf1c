"""The text tokenizer of a CLIP architecture, offline: open_clip's SimpleTokenizer with its bundled BPE file.

(A SigLIP checkpoint brings its own tokenizer file: ``clipsan.models.file_tokenizer``.)
"""

from __future__ import annotations

from typing import Any

from clipsan.errors import UserError
from clipsan.models.registry import model_config, unknown_arch_error
from clipsan.openclip import open_clip, quiet_open_clip

_tokenizers: dict[tuple[str, int], Any] = {}


def tokenizer_for(arch: str, context_length: int) -> Any:
    """open_clip's offline SimpleTokenizer for `arch` (cached; picklable for data workers).

    SimpleTokenizer truncates long texts to `context_length` and then writes the
    end-of-text token into the last slot, so the EOT token (which CLIP pools on) survives.
    """
    key = (arch, int(context_length))
    if key not in _tokenizers:
        cfg = model_config(arch)
        if cfg is None:
            raise unknown_arch_error(arch)
        hub_name = cfg.get("text_cfg", {}).get("hf_tokenizer_name")
        # open_clip picks a hub-downloaded SigLIP tokenizer for any name containing "siglip".
        if hub_name or "siglip" in arch.lower():
            raise UserError(
                f"{arch}: its tokenizer ({hub_name or 'SigLIP'}) is not CLIP's BPE; clipsan never downloads one: "
                "it reads a SigLIP checkpoint's tokenizer.json or spiece.model from the checkpoint's folder"
            )
        with quiet_open_clip():
            tokenizer = open_clip.get_tokenizer(arch, context_length=int(context_length))
        if not isinstance(tokenizer, open_clip.SimpleTokenizer):
            raise UserError(f"{arch}: unsupported tokenizer {type(tokenizer).__name__} (needs CLIP BPE)")
        _tokenizers[key] = tokenizer
    return _tokenizers[key]
