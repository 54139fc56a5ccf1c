"""ImageNet folder names (WordNet ids, "wnids") -> the class names CLIP's zero-shot prompts use.

``imagenet_wnids.txt`` lists the 1000 ILSVRC-2012 wnids in sorted order, the order
of open_clip's ``IMAGENET_CLASSNAMES`` (which has the names but not the wnids).
Each folder is looked up by its own wnid, so any subset of the 1000 classes
(Imagenette, ImageNet-100) gets the right names and a folder that is not one of
them is never given a neighbour's name.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from clipsan.errors import UserError

WNID_FILE = "imagenet_wnids.txt"
_WNID = re.compile(r"n\d{8}")


def looks_like_wnid(name: str) -> bool:
    return _WNID.fullmatch(name) is not None


@functools.cache
def imagenet_names_by_wnid() -> dict[str, str]:
    from clipsan.openclip import open_clip

    wnids = resources.files("clipsan.data").joinpath(WNID_FILE).read_text(encoding="ascii").split()
    return dict(zip(wnids, open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES, strict=True))


def wnid_classnames(root: Path, folder_names: Sequence[str], display: Callable[[str], str]) -> tuple[list[str], str]:
    """Class names for folders of which some are wnids: each wnid by the table, other folders by ``display``.

    A folder named like a wnid that is not an ImageNet-1k class (an ImageNet-21k
    synset, a typo) is refused: prompting with its raw id would give a figure
    that looks measured and is not.
    """
    table = imagenet_names_by_wnid()
    unknown = [name for name in folder_names if looks_like_wnid(name) and name not in table]
    if unknown:
        others = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise UserError(
            f"{root / unknown[0]}: folder named like a WordNet id but not one of the 1000 ImageNet-1k classes{others}; "
            "name the classes with --classnames FILE (one name per folder, in sorted folder order)"
        )
    mapped = sum(name in table for name in folder_names)
    return [table.get(name) or display(name) for name in folder_names], f"ImageNet-1k wnids: {mapped} of {len(folder_names)} folders"
