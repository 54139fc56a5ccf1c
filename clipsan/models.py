"""CLIP model creation, clipsan's architecture registry and architecture inference.

Everything here is offline: models are randomly initialised from open_clip
configs (weights come from `clipsan.checkpoint`), tokenizers are open_clip's
SimpleTokenizer with its bundled BPE file, and architectures that would need a
Hugging Face download are refused.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import json
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipsan.data.tokens import PAD_ID, fit_caption
from clipsan.errors import UserError
from clipsan.openclip import open_clip
from clipsan.quick_gelu import use_lean_quick_gelu

CONFIG_DIR = Path(__file__).parent / "model_configs"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

Shapes = Mapping[str, tuple[int, ...]]

_archs_registered = False
_extra_config_dir: Path | None = None
_shape_tables: dict[str, dict[str, tuple[int, ...]] | None] = {}
_tokenizers: dict[tuple[str, int], Any] = {}
_local_archs: set[str] = set()  # registered from a checkpoint, not shipped with open_clip/clipsan


# --------------------------------------------------------------------------- registry


def register_archs() -> None:
    """Make clipsan's bundled configs (clipsan/model_configs/*.json) known to open_clip."""
    global _archs_registered
    if _archs_registered:
        return
    open_clip.add_model_config(CONFIG_DIR)
    _archs_registered = True


def list_archs() -> list[str]:
    """Every architecture name open_clip knows, clipsan's included."""
    register_archs()
    return list(open_clip.list_models())


def model_config(arch: str) -> dict[str, Any] | None:
    """A copy of the config registered under `arch`, or None."""
    register_archs()
    return open_clip.get_model_config(arch)


def register_model_config(name: str, cfg: Mapping[str, Any]) -> str:
    """Register a config that came with a checkpoint (local-dir folder, clipsan metadata).

    Returns the name it is known under: an existing name whose config is identical,
    else `name` (made unique if that name is taken by a different config).
    """
    register_archs()
    cfg = json.loads(json.dumps(cfg))  # plain JSON types, detached from the caller
    _require_complete_config(name, cfg)
    wanted = _canonical(cfg)
    for known in _by_preference(list_archs()):
        if _canonical(open_clip.get_model_config(known)) == wanted:
            return known
    name = _unique_name(_safe_arch_name(name))
    # open_clip only registers configs from files: keep ours in a private temp dir.
    config_file = _private_config_dir() / f"{name}.json"
    config_file.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    open_clip.add_model_config(config_file)
    _local_archs.add(name)
    return name


def _canonical(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A config as open_clip builds it: "quick_gelu": false is the same as leaving it out."""
    if cfg is None:
        return None
    return {k: v for k, v in cfg.items() if not (k == "quick_gelu" and not v)}


def uses_quick_gelu(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg.get("quick_gelu", False))


def arch_with_activation(arch: str, quick_gelu: bool) -> str:
    """`arch`, or its twin with the other activation (ViT-B-32 <-> ViT-B-32-quickgelu), registered if open_clip has none."""
    cfg = model_config(arch)
    if cfg is None:
        raise _unknown_arch_error(arch)
    if uses_quick_gelu(cfg) == quick_gelu:
        return arch
    if quick_gelu:
        return register_model_config(f"{arch}-quickgelu", {**cfg, "quick_gelu": True})
    base = arch.removesuffix("-quickgelu")
    return register_model_config(base if base != arch else f"{arch}-gelu", {k: v for k, v in cfg.items() if k != "quick_gelu"})


def known_arch(name: str) -> str:
    """An --arch value: any known name, or NAME-quickgelu for any known NAME (open_clip ships only some twins)."""
    if model_config(name) is None and name.endswith("-quickgelu") and model_config(name.removesuffix("-quickgelu")) is not None:
        return arch_with_activation(name.removesuffix("-quickgelu"), True)
    return name


def _require_complete_config(name: str, cfg: Mapping[str, Any]) -> None:
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise UserError(f"{name}: model config lacks {', '.join(missing)}")


def _safe_arch_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return cleaned or "local-model"


def _unique_name(name: str) -> str:
    known = set(list_archs())
    if name not in known:
        return name
    n = 2
    while f"{name}-local{n}" in known:
        n += 1
    return f"{name}-local{n}"


def _private_config_dir() -> Path:
    global _extra_config_dir
    if _extra_config_dir is None:
        _extra_config_dir = Path(tempfile.mkdtemp(prefix="clipsan-archs-"))
        atexit.register(shutil.rmtree, _extra_config_dir, True)
    return _extra_config_dir


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def _preference_key(name: str, prefer_quickgelu: bool = False) -> tuple[Any, ...]:
    """Order among architectures with identical weights: shipped configs before ones
    registered from a checkpoint, then the plain name (RN50 before RN50-quickgelu) unless
    the weights are known to be OpenAI's (trained with QuickGELU)."""
    is_quickgelu = "quickgelu" in name.lower()
    return (name in _local_archs, is_quickgelu != prefer_quickgelu, len(name), _natural_key(name))


def _by_preference(names: list[str], prefer_quickgelu: bool = False) -> list[str]:
    return sorted(names, key=lambda n: _preference_key(n, prefer_quickgelu))


def _needs_hub_text_tower(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg.get("text_cfg", {}).get("hf_model_name"))


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs 'initialized randomly' warnings on every build: not news to us."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


# --------------------------------------------------------------------------- model


def _unknown_arch_error(arch: str) -> UserError:
    close = difflib.get_close_matches(arch, list_archs(), n=5, cutoff=0.4)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return UserError(f"unknown architecture {arch!r}{hint} (any open_clip model name or a clipsan one)")


def create_model(
    arch: str,
    device: str | torch.device = "cpu",
    preprocess_cfg: Mapping[str, Any] | None = None,
) -> ClipModel:
    """A randomly initialised `arch` (never downloads). `preprocess_cfg` overrides mean/std."""
    cfg = model_config(arch)
    if cfg is None:
        raise _unknown_arch_error(arch)
    if _needs_hub_text_tower(cfg):
        raise UserError(f"{arch}: its text tower is a Hugging Face model ({cfg['text_cfg']['hf_model_name']}) that would be downloaded; clipsan runs offline")
    with _quiet_open_clip():
        try:
            clip = open_clip.create_model(
                arch,
                pretrained=None,
                device="cpu",
                pretrained_image=False,
                pretrained_text=False,
                force_preprocess_cfg=dict(preprocess_cfg) if preprocess_cfg else None,
            )
        except Exception as err:  # a config open_clip itself cannot build offline
            raise UserError(f"{arch}: cannot build this architecture offline ({_one_line(err)})") from None
    model = ClipModel(clip, arch, cfg, open_clip.get_model_preprocess_cfg(clip))
    return model.to(device)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


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
        mean = tuple(preprocess_cfg.get("mean") or OPENAI_MEAN)
        std = tuple(preprocess_cfg.get("std") or OPENAI_STD)
        self.preprocess_cfg: dict[str, Any] = {**json.loads(json.dumps(dict(preprocess_cfg))), "mean": mean, "std": std}
        self.image_size = _square_size(preprocess_cfg.get("size") or clip.visual.image_size, arch)
        self.context_length = int(clip.context_length)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

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

    def tokenize(self, texts: list[str]) -> torch.LongTensor:
        tokenizer = tokenizer_for(self.arch, self.context_length)
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
        self.clip.transformer.compile(**options)

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


def tokenizer_for(arch: str, context_length: int) -> Any:
    """open_clip's offline SimpleTokenizer for `arch` (cached; picklable for data workers).

    SimpleTokenizer truncates long texts to `context_length` and then writes the
    end-of-text token into the last slot, so the EOT token (which CLIP pools on) survives.
    """
    key = (arch, int(context_length))
    if key not in _tokenizers:
        cfg = model_config(arch)
        if cfg is None:
            raise _unknown_arch_error(arch)
        hub_name = cfg.get("text_cfg", {}).get("hf_tokenizer_name")
        # open_clip picks a hub-downloaded SigLIP tokenizer for any name containing "siglip".
        if hub_name or "siglip" in arch.lower():
            raise UserError(
                f"{arch}: its tokenizer ({hub_name or 'SigLIP'}) would be downloaded from the "
                "Hugging Face hub; clipsan runs offline and supports CLIP-BPE text towers only"
            )
        with _quiet_open_clip():
            tokenizer = open_clip.get_tokenizer(arch, context_length=int(context_length))
        if not isinstance(tokenizer, open_clip.SimpleTokenizer):
            raise UserError(f"{arch}: unsupported tokenizer {type(tokenizer).__name__} (needs CLIP BPE)")
        _tokenizers[key] = tokenizer
    return _tokenizers[key]


# --------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class ArchMatch:
    """Result of matching a state dict against the known architectures.

    `alternatives` are other names with identical key names and shapes (e.g. the
    -quickgelu twin): the weights cannot tell them apart, the user can with --arch.
    """

    arch: str
    alternatives: tuple[str, ...] = ()


def infer_arch(shapes: Shapes) -> str:
    """The architecture whose state dict has exactly these key names and shapes."""
    return match_arch(shapes).arch


def match_arch(shapes: Shapes, prefer_quickgelu: bool = False) -> ArchMatch:
    """Like `infer_arch`, also reporting equally good alternatives.

    Raises UserError naming the three closest candidates and what differs.
    """
    shapes = {k: tuple(v) for k, v in shapes.items()}
    wanted = state_signature(shapes)
    # Shipped configs only: which checkpoints a process read before must not change what a file is inferred to be.
    names = [n for n in list_archs() if n not in _local_archs and _buildable_offline(n)]
    lacking = [what for key, what in (("text_tokens", "a text token embedding"), ("vision_kind", "an image tower stem")) if key not in wanted]
    if lacking:
        # Every architecture open_clip builds has both: none can match, and building them all (a minute) would only confirm it.
        raise UserError(f"no known architecture has these {len(shapes)} weights' names and shapes: they lack {' and '.join(lacking)}")
    candidates = [n for n in names if _signatures_agree(wanted, config_signature(model_config(n)))]
    exact = [n for n in candidates if shape_table(n) == shapes]
    if exact:
        ranked = _by_preference(exact, prefer_quickgelu)
        return ArchMatch(ranked[0], tuple(ranked[1:]))
    raise UserError(_no_match_message(shapes, wanted, names))


def _buildable_offline(name: str) -> bool:
    cfg = model_config(name)
    return cfg is not None and not _needs_hub_text_tower(cfg)


def shape_table(arch: str) -> dict[str, tuple[int, ...]] | None:
    """Key names and shapes of `arch`'s state dict, built on the meta device (no memory,
    no init cost). Cached per process; None if the config cannot be built offline."""
    if arch not in _shape_tables:
        _shape_tables[arch] = _build_shape_table(arch)
    return _shape_tables[arch]


def _build_shape_table(arch: str) -> dict[str, tuple[int, ...]] | None:
    if not _buildable_offline(arch):
        return None
    try:
        with _quiet_open_clip(), torch.device("meta"):
            clip = open_clip.create_model(arch, device="meta", pretrained_image=False, pretrained_text=False)
    except Exception:
        return None
    return {k: tuple(v.shape) for k, v in clip.state_dict().items()}


# Cheap structural features, read from a config or from a state dict, used to avoid
# building ~140 models for every inference. A feature either side cannot tell is ignored.


def config_signature(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    if not cfg:
        return {}
    vision = cfg.get("vision_cfg", {})
    text = cfg.get("text_cfg", {})
    signature: dict[str, Any] = {
        "text_tokens": (int(text.get("vocab_size", 49408)), int(text.get("width", 512))),
        "text_layers": int(text.get("layers", 12)),
    }
    layers = vision.get("layers", 12)
    if vision.get("timm_model_name"):
        signature["vision_kind"] = "timm"
    elif isinstance(layers, (list, tuple)):
        signature.update(vision_kind="resnet", vision_width=int(vision.get("width", 64)), vision_layers=tuple(int(n) for n in layers))
    else:
        signature.update(vision_kind="vit", vision_width=int(vision.get("width", 768)), vision_layers=int(layers))
    return signature


def state_signature(shapes: Shapes) -> dict[str, Any]:
    signature: dict[str, Any] = {}
    for prefix in ("", "text."):
        tokens = shapes.get(f"{prefix}token_embedding.weight")
        if tokens is not None and len(tokens) == 2:
            signature["text_tokens"] = tuple(tokens)
            signature["text_layers"] = _count_blocks(shapes, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
    stem = shapes.get("visual.conv1.weight")
    if any(k.startswith("visual.trunk.") for k in shapes):
        signature["vision_kind"] = "timm"
    elif "visual.attnpool.positional_embedding" in shapes and stem is not None:
        stages = tuple(_count_blocks(shapes, rf"visual\.layer{i}\.(\d+)\.") for i in (1, 2, 3, 4))
        # ModifiedResNet's stem starts at width // 2 channels.
        signature.update(vision_kind="resnet", vision_width=stem[0] * 2, vision_layers=stages)
    elif stem is not None and "visual.class_embedding" in shapes:
        signature.update(vision_kind="vit", vision_width=stem[0], vision_layers=_count_blocks(shapes, r"visual\.transformer\.resblocks\.(\d+)\."))
    return signature


def _count_blocks(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def _signatures_agree(wanted: Mapping[str, Any], offered: Mapping[str, Any]) -> bool:
    return all(offered[k] == v for k, v in wanted.items() if k in offered)


def _signature_distance(wanted: Mapping[str, Any], offered: Mapping[str, Any]) -> int:
    return sum(1 for k, v in wanted.items() if k in offered and offered[k] != v)


@dataclass(frozen=True)
class ShapeDiff:
    missing: list[str]  # in the architecture, not in the checkpoint
    unexpected: list[str]  # in the checkpoint, not in the architecture
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, checkpoint, architecture

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self, arch: str) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys ({_first_few(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys ({_first_few(self.unexpected)})")
        if self.mismatched:
            key, got, expected = self.mismatched[0]
            parts.append(f"{len(self.mismatched)} shape mismatches (first {key}: checkpoint {list(got)} vs {arch} {list(expected)})")
        return ", ".join(parts) or "identical"


def _first_few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def compare_shapes(checkpoint: Shapes, architecture: Shapes) -> ShapeDiff:
    """What separates a checkpoint's key names/shapes from an architecture's."""
    missing = [k for k in architecture if k not in checkpoint]
    unexpected = [k for k in checkpoint if k not in architecture]
    mismatched = [(k, tuple(checkpoint[k]), tuple(architecture[k])) for k in architecture if k in checkpoint and tuple(checkpoint[k]) != tuple(architecture[k])]
    return ShapeDiff(missing, unexpected, mismatched)


def _no_match_message(shapes: Shapes, wanted: Mapping[str, Any], names: list[str]) -> str:
    # Build only the configs whose cheap features are closest: enough to explain the miss.
    by_features = sorted(names, key=lambda n: (_signature_distance(wanted, config_signature(model_config(n))), _preference_key(n)))
    scored = []
    for name in by_features[:8]:
        table = shape_table(name)
        if table is not None:
            diff = compare_shapes(shapes, table)
            if diff.size < len(shapes):  # a candidate differing in everything explains nothing
                scored.append((diff.size, _preference_key(name), name, diff))
    scored.sort(key=lambda item: item[:2])
    closest = "; ".join(f"{name}: {diff.describe(name)}" for _, _, name, diff in scored[:3])
    return (
        f"no known architecture has these {len(shapes)} weights' names and shapes; closest: {closest or 'none'}; pass --arch NAME if it is a known architecture"
    )
