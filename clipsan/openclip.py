"""open_clip, imported without its Hugging Face text-tower adapter.

open_clip imports ``transformers`` (where it is installed) as it loads, for text towers
that are Hugging Face models. clipsan refuses those towers before building anything
(they would be downloaded: ``models.create_model``), so it imports open_clip with
transformers hidden, which saves 0.7 s (warm) to 2.6 s (cold) of start-up per command
on machines that have transformers. A process that has imported transformers already
keeps it, and transformers stays importable afterwards. Every clipsan module takes
open_clip from here.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator


def _import_open_clip():
    hide = "transformers" not in sys.modules
    if hide:
        sys.modules["transformers"] = None  # `import transformers` raises ImportError: open_clip's adapter stays unloaded
    try:
        import open_clip
    finally:
        if hide and "transformers" in sys.modules and sys.modules["transformers"] is None:
            del sys.modules["transformers"]
    return open_clip


open_clip = _import_open_clip()


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """open_clip logs 'initialized randomly' warnings on every build: not news to us."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
