"""ImageNet-1k folder names (wnids) -> the class names CLIP's zero-shot prompts use."""

from __future__ import annotations

import re
from collections.abc import Sequence

IMAGENET_CLASS_COUNT = 1000
_WNID = re.compile(r"n\d{8}")


def looks_like_imagenet(folder_names: Sequence[str]) -> bool:
    """True for exactly 1000 distinct wnid-named folders (n01440764, ...)."""
    return len(folder_names) == IMAGENET_CLASS_COUNT and len(set(folder_names)) == IMAGENET_CLASS_COUNT and all(_WNID.fullmatch(name) for name in folder_names)


def imagenet_classnames() -> list[str]:
    """open_clip's IMAGENET_CLASSNAMES: listed in sorted-wnid order, as ImageFolder sorts folders."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)
