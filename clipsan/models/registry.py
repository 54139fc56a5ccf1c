"""clipsan's architecture registry: which open_clip configs exist, and their activation twins.

Configs are data (clipsan/models/model_configs/*.json, as open_clip keeps its own): clipsan's
tiny lab architectures are registered with open_clip once; a config that came with a
checkpoint (a local-dir folder, clipsan metadata) is registered under a name of its own.
"""

from __future__ import annotations

import atexit
import difflib
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipsan.atomic import write_errors
from clipsan.errors import UserError
from clipsan.models.siglip_vit import register_tower
from clipsan.openclip import open_clip

CONFIG_DIR = Path(__file__).parent / "model_configs"

_archs_registered = False
_extra_config_dir: Path | None = None
_local_archs: set[str] = set()  # registered from a checkpoint, not shipped with open_clip/clipsan


def register_archs() -> None:
    """Make clipsan's bundled configs (clipsan/models/model_configs/*.json) known to open_clip."""
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
    """A copy of the config registered under `arch`, or None (a SigLIP tower it names by size is made known to timm)."""
    register_archs()
    cfg = open_clip.get_model_config(arch)
    register_tower(cfg)
    return cfg


def is_sigmoid_config(cfg: Mapping[str, Any] | None) -> bool:
    """A SigLIP-family config: trained with the sigmoid loss, so it has a logit bias."""
    return (cfg or {}).get("init_logit_bias") is not None


def register_model_config(name: str, cfg: Mapping[str, Any]) -> str:
    """Register a config that came with a checkpoint (local-dir folder, clipsan metadata).

    Returns the name it is known under: an existing name whose config is identical,
    else `name` (made unique if that name is taken by a different config).
    """
    register_archs()
    cfg = json.loads(json.dumps(cfg))  # plain JSON types, detached from the caller
    _require_complete_config(name, cfg)
    wanted = _canonical(cfg)
    for known in by_preference(list_archs()):
        if _canonical(open_clip.get_model_config(known)) == wanted:
            return known
    name = _unique_name(_safe_arch_name(name))
    # open_clip only registers configs from files: keep ours in a private temp dir.
    config_file = _private_config_dir() / f"{name}.json"
    with write_errors(config_file):
        config_file.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    open_clip.add_model_config(config_file)
    _local_archs.add(name)
    return name


def is_shipped(arch: str) -> bool:
    """Whether `arch` came with open_clip or clipsan (not registered from a checkpoint this process read)."""
    return arch not in _local_archs


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
        raise unknown_arch_error(arch)
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


def preference_key(name: str, prefer_quickgelu: bool = False) -> tuple[Any, ...]:
    """Order among architectures with identical weights: shipped configs before ones
    registered from a checkpoint, then the plain name (RN50 before RN50-quickgelu) unless
    the weights are known to be OpenAI's (trained with QuickGELU)."""
    is_quickgelu = "quickgelu" in name.lower()
    return (name in _local_archs, is_quickgelu != prefer_quickgelu, len(name), _natural_key(name))


def by_preference(names: list[str], prefer_quickgelu: bool = False) -> list[str]:
    return sorted(names, key=lambda n: preference_key(n, prefer_quickgelu))


def needs_hub_text_tower(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg.get("text_cfg", {}).get("hf_model_name"))


def unknown_arch_error(arch: str) -> UserError:
    close = difflib.get_close_matches(arch, list_archs(), n=5, cutoff=0.4)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return UserError(f"unknown architecture {arch!r}{hint} (any open_clip model name or a clipsan one)")
