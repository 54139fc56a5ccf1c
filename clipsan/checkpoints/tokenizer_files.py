"""A transformers folder's tokenizer files against CLIP's BPE, which clipsan tokenises with.

clipsan's tokenizer is open_clip's SimpleTokenizer over CLIP's BPE (49408 tokens). A
folder whose `vocab.json`/`merges.txt` (or `tokenizer.json`) hold that same BPE is
tokenised as its own CLIPTokenizer would (the special tokens only differ in spelling:
`<|startoftext|>` there, `<start_of_text>` in open_clip; their ids are the same); a
folder with another vocabulary is refused: its text tower was trained on other tokens.
Written outputs get the same files, so CLIPTokenizer.from_pretrained(OUT) works.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from clipsan.atomic import atomic_write_bytes
from clipsan.checkpoints.base import read_json, read_text
from clipsan.errors import UserError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
MERGES_HEADER = "#version: 0.2"


@functools.cache
def clip_bpe() -> tuple[dict[str, int], tuple[str, ...]]:
    """CLIP's BPE as transformers spells it: the vocabulary (token -> id) and the merges ("a b")."""
    from clipsan.openclip import open_clip

    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    vocab = dict(tokenizer.encoder)
    for open_clip_name, name in (("<start_of_text>", BOS), ("<end_of_text>", EOS)):
        vocab[name] = vocab.pop(open_clip_name)
    merges = tuple(" ".join(pair) for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1]))
    return vocab, merges


def check_folder(folder: Path) -> str | None:
    """A note when the folder's tokenizer is CLIP's BPE, None when it has none; UserError when it is another."""
    vocab_file, merges_file, fast_file = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer.json"
    found = []
    if vocab_file.is_file():
        _same_vocab(vocab_file, read_json(vocab_file))
        found.append(vocab_file.name)
    if merges_file.is_file():
        lines = [line for line in read_text(merges_file).splitlines() if line and not line.startswith("#version")]
        _same_merges(merges_file, lines)
        found.append(merges_file.name)
    if fast_file.is_file():
        model = read_json(fast_file).get("model")
        kind = model.get("type") if isinstance(model, dict) else None
        if kind != "BPE":
            raise UserError(f"{fast_file}: a {kind} tokenizer, not CLIP's BPE; the text tower was trained on other tokens")
        _same_vocab(fast_file, model.get("vocab"))
        _same_merges(fast_file, _merge_lines(model.get("merges")))
        found.append(fast_file.name)
    return f"tokenizer: {folder}/{' + '.join(found)} hold CLIP's BPE, which clipsan tokenises with" if found else None


def _merge_lines(merges: Any) -> list[str]:
    """tokenizer.json's merges ("a b" or ["a", "b"]) as merges.txt lines; anything else compares unequal."""
    if not isinstance(merges, list):
        return []
    return [m if isinstance(m, str) else " ".join(map(str, m)) if isinstance(m, list) else repr(m) for m in merges]


def _same_vocab(path: Path, vocab: Any) -> None:
    expected, _ = clip_bpe()
    if vocab == expected:
        return
    if not isinstance(vocab, dict):
        raise UserError(f"{path}: expected the vocabulary as a JSON object (token -> id), found {type(vocab).__name__}")
    differing = [token for token, index in expected.items() if vocab.get(token) != index]
    first = f"first {differing[0]!r}" if differing else f"{len(vocab) - len(expected)} extra"
    raise UserError(
        f"{path}: not CLIP's BPE vocabulary ({len(vocab)} tokens, {len(differing)} differ from CLIP's {len(expected)}, {first}); "
        "clipsan tokenises with CLIP's BPE only"
    )


def _same_merges(path: Path, merges: list[str]) -> None:
    _, expected = clip_bpe()
    if tuple(merges) != expected:
        at = next((i for i, (a, b) in enumerate(zip(merges, expected)) if a != b), min(len(merges), len(expected)))
        raise UserError(
            f"{path}: not CLIP's BPE merges ({len(merges)} merges vs {len(expected)}, first difference at merge {at}); clipsan tokenises with CLIP's BPE only"
        )


def write_files(folder: Path, context_length: int) -> None:
    """CLIP's BPE as a transformers CLIPTokenizer reads it."""
    vocab, merges = clip_bpe()
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {"tokenizer_class": "CLIPTokenizer", **special, "model_max_length": int(context_length), "do_lower_case": True, "errors": "replace"}
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "\n".join((MERGES_HEADER, *merges)) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
    for name, text in files.items():
        atomic_write_bytes(folder / name, text.encode("utf-8"))
