"""ClipModel: an open_clip model plus what clipsan needs around it (pixel normalisation,
tokenisation, the architecture name, its family) and the speed hooks ``clipsan.engine.speed`` uses.

Two families: CLIP (softmax contrastive loss; CLIP's BPE, which clipsan ships) and SigLIP (sigmoid
loss with a learned ``logit_bias``; a text tower that reads every position and pools the last; its
tokenizer comes with the checkpoint: ``ClipModel.tokenizer`` is set by whoever read the checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipsan.data.tokens import PAD_ID, fit_caption
from clipsan.errors import UserError
from clipsan.models.file_tokenizer import FileTokenizer
from clipsan.models.quick_gelu import use_lean_quick_gelu
from clipsan.models.tokenizer import tokenizer_for
from clipsan.openclip import open_clip


def _square_size(size: Any, arch: str) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise UserError(f"{arch}: non-square input size {tuple(size)} is not supported")
        size = size[0]
    return int(size)


class ClipModel(nn.Module):
    """An open_clip model plus what clipsan needs around it: pixel normalisation,
    tokenisation and the architecture name. `clip.state_dict()` is what gets saved."""

    def __init__(
        self,
        clip: nn.Module,
        arch: str,
        model_cfg: Mapping[str, Any],
        preprocess_cfg: Mapping[str, Any],
    ) -> None:
        super().__init__()
        use_lean_quick_gelu(clip)  # the same numbers, less kept for backward
        self.clip = clip
        self.arch = arch
        self.model_cfg: dict[str, Any] = json.loads(json.dumps(model_cfg))
        mean = tuple(preprocess_cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN)
        std = tuple(preprocess_cfg.get("std") or open_clip.OPENAI_DATASET_STD)
        self.preprocess_cfg: dict[str, Any] = {**json.loads(json.dumps(dict(preprocess_cfg))), "mean": mean, "std": std}
        self.image_size = _square_size(preprocess_cfg.get("size") or clip.visual.image_size, arch)
        self.context_length = int(clip.context_length)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.file_tokenizer: FileTokenizer | None = None  # a SigLIP checkpoint's own tokenizer, set by its reader

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def logit_bias(self) -> nn.Parameter | None:
        """SigLIP's learned bias of the pairwise logits (None for CLIP)."""
        return getattr(self.clip, "logit_bias", None)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """The model's own (images x texts) logits of unit features: exp(logit_scale) * cosine, plus
        logit_bias for SigLIP (whose sigmoid of a logit is the pair's match probability). In fp32."""
        scale = self.logit_scale.float().exp()
        logits = scale * image_features.float() @ text_features.float().T
        return logits + self.logit_bias.float() if self.is_sigmoid else logits

    @property
    def is_sigmoid(self) -> bool:
        """Whether the model was trained with SigLIP's sigmoid loss (it has a logit bias), not CLIP's softmax."""
        return self.logit_bias is not None

    @property
    def family(self) -> str:
        return "siglip" if self.is_sigmoid else "clip"

    def normalize_pixels(self, images01: torch.Tensor) -> torch.Tensor:
        mean = self.pixel_mean.to(images01.dtype)
        std = self.pixel_std.to(images01.dtype)
        return (images01 - mean) / std

    # Features leave the towers as fp32 (normalised in fp32) whatever autocast ran them in:
    # bf16 unit vectors are off unit norm by up to 1e-2, enough to break a cosine threshold.
    def encode_image(self, images01: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.clip.encode_image(self.normalize_pixels(images01)).float()
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text features of ``tokens``: full rows, or rows cut after the batch's padding starts
        (``clipsan.data.tokens.drop_padding``), which give the same features."""
        width = tokens.shape[-1]
        if width == self.context_length:
            features = self.clip.encode_text(tokens)
        elif self.reads_text_prefix:
            features = _encode_text_prefix(self.clip, tokens)
        else:  # a tower that sees every position: give it its padding back
            features = self.clip.encode_text(F.pad(tokens, (0, self.context_length - width), value=PAD_ID))
        features = features.float()
        return F.normalize(features, dim=-1) if normalize else features

    @property
    def reads_text_prefix(self) -> bool:
        """Whether the text tower's feature depends on the tokens up to the end-of-text token only:
        open_clip's CLIP with a causal mask, pooled at that token (OpenAI's and LAION's CLIPs)."""
        clip = self.clip
        causal = isinstance(clip, open_clip.CLIP) and getattr(clip, "attn_mask", None) is not None
        return causal and getattr(clip, "text_pool_type", None) in ("argmax", "eos")

    def forward(self, images01: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images01), self.encode_text(tokens)

    @property
    def tokenizer(self) -> Any:
        """Texts -> (B, context_length) token ids (picklable: data workers tokenise with it)."""
        if self.file_tokenizer is not None:
            return self.file_tokenizer
        if self.is_sigmoid:
            raise UserError(
                f"{self.arch}: a SigLIP model tokenises with its checkpoint's own tokenizer file (tokenizer.json or spiece.model in its folder); none was read"
            )
        return tokenizer_for(self.arch, self.context_length)  # CLIP's BPE; refuses hub tokenizers (SigLIP) with the reason

    def tokenize(self, texts: list[str]) -> torch.LongTensor:
        tokenizer = self.tokenizer
        return tokenizer([fit_caption(text, tokenizer) for text in texts])  # long texts cut before BPE (same tokens)

    # --- speed hooks (clipsan.engine.speed): none changes the parameters or their names

    @property
    def has_resnet_tower(self) -> bool:
        return isinstance(self.clip.visual, open_clip.modified_resnet.ModifiedResNet)

    def compile_encoders(self, **options) -> None:
        """torch.compile the image tower and the text transformer in place (state_dict keys unchanged).

        The loss, pixel normalisation and the text pooling around them stay eager.
        """
        self.clip.visual.compile(**options)
        self.text_tower.transformer.compile(**options)

    @property
    def text_tower(self) -> nn.Module:
        """What holds the text transformer: open_clip's CLIP itself, or a custom-text model's ``text`` (SigLIP)."""
        return getattr(self.clip, "text", self.clip)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer blocks' activations in backward (open_clip; ResNet towers are not checkpointed)."""
        self.clip.set_grad_checkpointing(enable)

    def use_channels_last(self) -> None:
        """NHWC weights for a ResNet image tower: faster convolutions where the backend has NHWC kernels."""
        if self.has_resnet_tower:
            self.clip.visual.to(memory_format=torch.channels_last)


def _encode_text_prefix(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` on the first ``tokens.shape[-1]`` positions only.

    Under the causal mask no position reads a later one, so positions after every row's
    end-of-text token (padding) cannot change the pooled features or their gradients; leaving
    them out cuts the text tower's work and saved activations by the same factor.
    """
    width = tokens.shape[-1]
    x = clip.token_embedding(tokens).to(clip.transformer.get_cast_dtype())
    x = x + clip.positional_embedding[:width].to(x.dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:width, :width])
    x = clip.ln_final(x)
    x = open_clip.transformer.text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    if clip.text_projection is None:
        return x
    return clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
