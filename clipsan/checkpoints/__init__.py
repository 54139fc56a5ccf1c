"""Checkpoint files: reading every layout people download, and writing a model back in it.

loading.py         load_model: MODEL -> LoadedModel (the model, and where each fact came from)
saving.py          save_model: clipsan's safetensors with self-describing metadata
read.py            MODEL (file, folder, local-dir:) -> the reader of its layout
base.py            Checkpoint: what every reader hands on; the layout names reports use
sniff.py           a file's format from its bytes (safetensors, PyTorch zip/pickle, TorchScript)
tensors.py         reading weight files without running code; finite / float32 checks; sha256
state_dict.py      open_clip, OpenAI clip-package and CleanCLIP/BadCLIP state dicts
hf.py              transformers CLIPModel / SiglipModel / Siglip2Model folders (single, sharded, .bin) and their weights file alone
hf_names.py        transformers <-> open_clip weight names (the q/k/v concat)
hf_config.py       config.json <-> open_clip model config; other families refused
siglip_names.py    transformers SigLIP <-> open_clip weight names (timm's image tower, open_clip's text tower)
siglip_config.py   SigLIP / SigLIP 2 config.json <-> open_clip model config
tokenizer_files.py a folder's tokenizer files against CLIP's BPE; writing them; a SigLIP folder's own tokenizer
open_clip_dir.py   open_clip hub folders
arch_inference.py  the architecture whose state dict has exactly these key names and shapes
resolve.py         the architecture and activation, and where each came from
output.py          --out-format: writing safetensors, a transformers folder or an open_clip folder
"""

from clipsan.checkpoints.loading import LoadedModel, load_model
from clipsan.checkpoints.read import LOCAL_DIR_PREFIX
from clipsan.checkpoints.resolve import META_ARCH
from clipsan.checkpoints.saving import save_model
from clipsan.checkpoints.tensors import read_metadata, sha256_file

__all__ = ["LOCAL_DIR_PREFIX", "META_ARCH", "LoadedModel", "load_model", "read_metadata", "save_model", "sha256_file"]
