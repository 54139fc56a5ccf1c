"""CLIP models as clipsan uses them, offline.

registry.py     which architectures exist (open_clip's and clipsan's model_configs/), activation twins
factory.py      create_model: a randomly initialised architecture (weights come from clipsan.checkpoints)
clip_model.py   ClipModel: pixel normalisation, tokenisation, fp32 features, its family (CLIP / SigLIP), the speed hooks
tokenizer.py    the offline CLIP BPE tokenizer of an architecture
file_tokenizer.py a SigLIP checkpoint's own tokenizer file (tokenizer.json / spiece.model), as its library runs it
siglip_vit.py   SigLIP image towers of any size, as timm ViTs under names that state every size
quick_gelu.py   QuickGELU keeping only its input for backward (bitwise open_clip's)
"""

from clipsan.models.clip_model import ClipModel
from clipsan.models.factory import create_model
from clipsan.models.registry import arch_with_activation, list_archs, model_config, register_archs
from clipsan.models.tokenizer import tokenizer_for

__all__ = ["ClipModel", "arch_with_activation", "create_model", "list_archs", "model_config", "register_archs", "tokenizer_for"]
