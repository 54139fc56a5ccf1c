"""Checkpoint layouts: reading each one people download, and writing a model back in it.

read.py            MODEL (file, folder, local-dir:) -> the reader of its layout
base.py            Checkpoint: what every reader hands on; the layout names reports use
sniff.py           a file's format from its bytes (safetensors, PyTorch zip/pickle, TorchScript)
tensors.py         reading weight files without running code; finite / float32 checks; sha256
state_dict.py      open_clip, OpenAI clip-package and CleanCLIP/BadCLIP state dicts
hf.py              transformers CLIPModel folders (single, sharded, .bin) and their weights file alone
hf_names.py        transformers <-> open_clip weight names (the q/k/v concat)
hf_config.py       config.json <-> open_clip model config; other families refused
tokenizer_files.py a folder's tokenizer files against CLIP's BPE; writing them
open_clip_dir.py   open_clip hub folders
resolve.py         the architecture and activation, and where each came from
output.py          --out-format: writing safetensors, a transformers folder or an open_clip folder
"""
