"""Cut a caption to what CLIP's tokenizer can keep, before BPE sees it; drop a batch's padding after it.

open_clip's tokenizer cleans a text, splits it into pieces (words, digits, runs
of symbols), byte-pair encodes each piece and then keeps ``context_length - 2``
tokens between its start and end tokens. Its BPE is quadratic in a piece's
length: a 10,000-character unbroken caption takes seconds, a 2,500-character one
a tenth of that. ``fit_caption`` cuts only captions that cannot fit:

- no vocabulary entry stands for more than 32 bytes of UTF-8 (24 among ASCII-only
  entries; ``longest_token_bytes``), so a piece of B bytes becomes at least
  ceil(B / 32) tokens (ceil(B / 24) for an ASCII piece);
- if those lower bounds, summed over the cleaned caption's pieces, stay within
  the ``context_length - 2`` tokens kept, the caption is returned unchanged (it
  may fit, and its BPE work is bounded by that same sum);
- otherwise the caption has more tokens than are kept, and the cleaned text is cut
  after the pieces that fill the kept tokens: those pieces encode exactly as
  before (BPE works piece by piece), only the piece straddling the cut may differ.

So a caption that fits is never changed, and no piece BPE sees is longer than
``(context_length - 2) * 32`` bytes (1,800 characters of ASCII at 77 tokens).
One caveat: the cut text is the cleaned one, which the tokenizer cleans again;
for the rare text that a second cleaning changes (HTML entities escaped three
times over) the kept tokens of a cut caption may differ slightly.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch

PAD_ID = 0  # what open_clip's SimpleTokenizer writes after the end-of-text token
WIDTH_STEP = 8  # widths are rounded up to a multiple of this: a compiled text tower then meets few shapes

# Shorter texts are handed over untouched, without cleaning them first: cleaning grows a
# text a few times at most (ligatures such as "ﬃ"), so their BPE costs little either way.
_UNCHECKED_CHARS = 256


def fit_caption(text: str, tokenizer: Any) -> str:
    """``text``, or a cut of it that keeps the tokens the tokenizer would keep, if ``text`` has more than that."""
    if len(text) <= _UNCHECKED_CHARS or getattr(tokenizer, "reduction_fn", None) is not None:
        return text  # short; or a tokenizer that keeps tokens from anywhere in the text, not its head
    if not hasattr(tokenizer, "bpe"):
        return text  # not open_clip's Python BPE: SigLIP's tokenizer files run in compiled code, in about linear time
    kept = tokenizer.context_length - 2  # the start and end tokens take two slots
    longest_ascii, longest = longest_token_bytes(tokenizer)
    cleaned = tokenizer.clean_fn(text)
    at_least, end = 0, 0  # tokens the whole pieces so far make at the least; where they end
    for piece in tokenizer.pat.finditer(cleaned):
        # An ASCII piece can only be covered by ASCII entries, which are shorter.
        span = longest_ascii if piece.group().isascii() else longest
        tokens = -(-len(piece.group().encode("utf-8")) // span)
        if at_least + tokens <= kept:
            at_least, end = at_least + tokens, piece.end()
            continue
        # More tokens than are kept: they all lie in the pieces so far and this one, which
        # is kept whole unless it alone could hold every kept token (then it is cut there).
        if at_least < kept:
            end = piece.start() + _chars_within(piece.group(), kept * span)
        return cleaned[:end]
    return text


def _chars_within(piece: str, max_bytes: int) -> int:
    """How many leading characters of ``piece`` fit in ``max_bytes`` bytes of UTF-8."""
    used = 0
    for i, char in enumerate(piece):
        used += len(char.encode("utf-8"))
        if used > max_bytes:
            return i
    return len(piece)


@functools.cache
def longest_token_bytes(tokenizer: Any) -> tuple[int, int]:
    """The most bytes of UTF-8 one vocabulary entry stands for: among ASCII-only entries, and among all."""
    longest_ascii = longest = 1
    for entry in tokenizer.encoder:
        chars = entry.removesuffix("</w>")
        if not all(c in tokenizer.byte_decoder for c in chars):
            continue  # a special token such as <start_of_text>: a piece of its own, one token
        data = bytes(tokenizer.byte_decoder[c] for c in chars)
        longest = max(longest, len(data))
        if data.isascii():
            longest_ascii = max(longest_ascii, len(data))
    return longest_ascii, longest


def padded_width(tokens: torch.Tensor) -> int:
    """How many leading columns of ``tokens`` (rows of token ids) reach the batch's last end-of-text
    token, rounded up to a multiple of ``WIDTH_STEP`` (at most the full width). Reads the values:
    call it on host tensors."""
    used = (tokens != PAD_ID).any(dim=0).nonzero()
    width = int(used[-1]) + 1 if len(used) else tokens.shape[-1]
    return min(tokens.shape[-1], -(-width // WIDTH_STEP) * WIDTH_STEP)


def drop_padding(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` without the trailing columns that are padding in every row (``padded_width``),
    like transformers' "pad to longest". ``ClipModel.encode_text`` takes such a prefix and gives
    the full rows' features."""
    return tokens[:, : padded_width(tokens)].contiguous()


def drop_common_padding(batch: dict, columns: Iterable[str]) -> dict:
    """``batch`` with its token ``columns`` cut to one width: the widest of their ``padded_width``s
    (one width, so a recipe can still concatenate them)."""
    columns = [name for name in columns if name in batch]
    if columns:
        width = max(padded_width(batch[name]) for name in columns)
        for name in columns:
            batch[name] = batch[name][:, :width].contiguous()
    return batch
