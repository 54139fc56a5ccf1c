"""SigLIP text tokenizers, read from the checkpoint's own tokenizer file (never downloaded).

open_clip names a hub tokenizer for its SigLIP architectures, and transformers reads one from the
model's folder through its tokenizer classes (~1 s of start-up to import). clipsan reads the
folder's file itself: ``tokenizer.json`` with the ``tokenizers`` library, ``spiece.model`` with
``sentencepiece``, and repeats what the layout's own library does around it:

* ``siglip``: transformers' ``SiglipTokenizer`` (spiece.model): lowercase (``do_lower_case``),
  punctuation removed, whitespace collapsed; the pieces, then ``</s>``; cut to the context
  length keeping ``</s>``; padded on the right.
* ``siglip2``: transformers' ``Siglip2Tokenizer`` (tokenizer.json): the file's normalizer with
  a lowercasing step before it, as that class adds on loading.
* ``json``: any other tokenizer.json as the file states it (normalizer, pieces, post-processor's
  special tokens), as ``PreTrainedTokenizerFast`` runs it.
* before any of these, open_clip's cleaning (``canonicalize``, ``lower``, ``whitespace``: its
  SigLIP configs' ``tokenizer_kwargs.clean``) for a checkpoint in open_clip's layout, as open_clip's
  ``HFTokenizer`` cleans texts before handing them to the folder's transformers tokenizer.

Every text comes back as ``context_length`` ids, padded with the pad token: SigLIP's text tower
pools the last position, so it was trained, and must run, on full-length rows.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from typing import Any

import torch

from clipsan.errors import UserError

TOKENIZER_JSON, SPIECE = "tokenizer.json", "spiece.model"
FILES = (TOKENIZER_JSON, SPIECE)  # which a folder's tokenizer is read from, in this order
SIGLIP, SIGLIP2, JSON = "siglip", "siglip2", "json"  # transformers' classes, as clipsan repeats them
STYLES = (SIGLIP, SIGLIP2, JSON)
OPEN_CLIP_CLEAN = ("canonicalize", "lower", "whitespace")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@dataclass
class FileTokenizer:
    """Texts -> (B, context_length) token ids, from one tokenizer file's bytes (picklable for data workers)."""

    file_name: str  # tokenizer.json | spiece.model
    data: bytes
    context_length: int
    style: str  # one of STYLES
    pad_id: int
    eos_id: int | None = None  # appended after the pieces (spiece.model); tokenizer.json's post-processor adds its own
    pad_left: bool = False  # a tokenizer whose class pads on the left (Siglip2Tokenizer unless its config says otherwise)
    lower: bool = True  # SiglipTokenizer's do_lower_case
    open_clip_clean: str | None = None  # one of OPEN_CLIP_CLEAN, for a checkpoint in open_clip's layout
    source: str = ""  # the file as read, for messages
    vocab_limit: int | None = None  # the model's text vocabulary: an id at or past it is refused, not looked up
    _backend: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_backend": None}  # rebuilt from the bytes where it is used

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def __call__(self, texts: list[str] | str) -> torch.LongTensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = [self._fit(ids) for ids in self._encode([self._clean(t) for t in texts])]
        if self.vocab_limit is not None and rows and max(map(max, rows)) >= self.vocab_limit:
            raise UserError(f"{self.source}: token id {max(map(max, rows))} is past the model's {self.vocab_limit}-token vocabulary")
        return torch.tensor(rows, dtype=torch.long).reshape(len(texts), self.context_length)

    @property
    def vocab_size(self) -> int:
        backend = self._load()
        return backend.get_piece_size() if self.file_name == SPIECE else backend.get_vocab_size(with_added_tokens=True)

    # ------------------------------------------------------------------ the steps

    def _clean(self, text: str) -> str:
        if self.open_clip_clean:
            from clipsan.openclip import open_clip

            text = open_clip.tokenizer.get_clean_fn(self.open_clip_clean)(text)
        if self.style == SIGLIP:
            text = text.lower() if self.lower else text
            text = re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()
        return text

    def _encode(self, texts: list[str]) -> list[list[int]]:
        backend = self._load()
        if self.file_name == SPIECE:
            return [list(ids[: self.context_length - 1]) + [self.eos_id] for ids in backend.encode(texts)]
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=True)]

    def _fit(self, ids: list[int]) -> list[int]:
        padding = [self.pad_id] * (self.context_length - len(ids))
        return padding + ids if self.pad_left else ids + padding

    def _load(self) -> Any:
        if self._backend is None:
            self._backend = _spiece(self) if self.file_name == SPIECE else _tokenizers(self)
        return self._backend


def _spiece(tok: FileTokenizer) -> Any:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(tok.data)
    except (RuntimeError, OSError, UnicodeDecodeError) as err:  # the last: its error message was not UTF-8
        raise UserError(f"{tok.source}: not a SentencePiece model ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return processor


def _tokenizers(tok: FileTokenizer) -> Any:
    from tokenizers import Tokenizer, normalizers

    try:
        backend = Tokenizer.from_str(tok.data.decode("utf-8"))
    except Exception as err:  # the Rust parser's errors carry no common type
        raise UserError(f"{tok.source}: not a tokenizers tokenizer.json ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if tok.style == SIGLIP2 and backend.normalizer is not None:
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), backend.normalizer])
    backend.no_padding()  # padded by FileTokenizer, to the context length
    # Cut keeping room for the post-processor's special tokens, as transformers' truncation=True does.
    backend.enable_truncation(max_length=tok.context_length)
    return backend


def token_id(tok: FileTokenizer, token: str) -> int | None:
    """A token's id in the file's vocabulary (None if it has none)."""
    backend = tok._load()
    found = backend.piece_to_id(token) if tok.file_name == SPIECE else backend.token_to_id(token)
    if tok.file_name == SPIECE and found == backend.unk_id() and token != _piece(backend, found):
        return None
    return found


def _piece(processor: Any, index: int) -> str | None:
    try:
        return processor.id_to_piece(index)
    except UnicodeDecodeError:  # a hostile model's piece that is not UTF-8 is no token's text
        return None
