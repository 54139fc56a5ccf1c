"""A folder's tokenizer files: CLIP's BPE checked against clipsan's, a SigLIP folder's own tokenizer read.

clipsan's tokenizer is open_clip's SimpleTokenizer over CLIP's BPE (49408 tokens). A
folder whose `vocab.json`/`merges.txt` (or `tokenizer.json`) hold that same BPE is
tokenised as its own CLIPTokenizer would (the special tokens only differ in spelling:
`<|startoftext|>` there, `<start_of_text>` in open_clip; their ids are the same); a
folder with another vocabulary is refused: its text tower was trained on other tokens.
Written outputs get the same files, so CLIPTokenizer.from_pretrained(OUT) works.

A SigLIP checkpoint has no shared vocabulary: its tokenizer is the one in its folder
(``siglip_tokenizer``), read as the class its tokenizer_config.json names would read it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

from clipsan.atomic import atomic_write_bytes
from clipsan.checkpoints.base import read_json, read_text
from clipsan.errors import UserError
from clipsan.models.file_tokenizer import FILES as TOKENIZER_FILE_NAMES
from clipsan.models.file_tokenizer import JSON, OPEN_CLIP_CLEAN, SIGLIP, SIGLIP2, SPIECE, STYLES, TOKENIZER_JSON, FileTokenizer, token_id

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


# --------------------------------------------------------------------------- SigLIP: the folder's own tokenizer

SIGLIP_TOKENIZER_FILES = (*TOKENIZER_FILE_NAMES, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model")
# transformers' SigLIP tokenizer classes and the defaults they bring: (file, style, pad token, pads on the left)
_SIGLIP_CLASSES = {
    "SiglipTokenizer": (SPIECE, SIGLIP, "</s>", False),
    "Siglip2Tokenizer": (TOKENIZER_JSON, SIGLIP2, "<pad>", True),
}
OPEN_CLIP_DEFAULT_CLEAN = "whitespace"  # open_clip's HFTokenizer cleans texts so unless a config's tokenizer_kwargs say otherwise
_FAMILY_CLASS = {"siglip": "SiglipTokenizer", "siglip2": "Siglip2Tokenizer"}  # AutoTokenizer's choice when no class is stated


def siglip_tokenizer(
    folder: Path, context_length: int, family: str | None = None, open_clip_clean: str | None = None, for_file: Path | None = None
) -> FileTokenizer:
    """The tokenizer a SigLIP checkpoint's folder holds, tokenising as the folder's own library would.

    The class named by tokenizer_config.json (else the one transformers picks for ``family``) says
    which file is read and how; ``open_clip_clean``: an open_clip layout's cleaning, applied first.
    """
    config = _json_if_present(folder / "tokenizer_config.json")
    special = _json_if_present(folder / "special_tokens_map.json")
    stated = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    file_name, style, pad, pad_left = _SIGLIP_CLASSES.get(stated or _FAMILY_CLASS.get(family or "", ""), (TOKENIZER_JSON, JSON, "<pad>", False))
    if not (folder / file_name).is_file():  # the class's own file is missing: the other one, as it states itself
        file_name, style = (SPIECE, SIGLIP) if file_name == TOKENIZER_JSON else (TOKENIZER_JSON, JSON)
        if not (folder / file_name).is_file():
            where = (
                f"{for_file}: a SigLIP weights file reads its tokenizer from its folder ({folder})"
                if for_file
                else f"{folder}: a SigLIP checkpoint reads its tokenizer from its folder"
            )
            raise UserError(f"{where}: expected its tokenizer, {TOKENIZER_JSON} or {SPIECE}, there (clipsan never downloads one)")
    path = folder / file_name
    tokenizer = FileTokenizer(
        file_name,
        path.read_bytes(),
        int(context_length),
        style,
        pad_id=0,
        pad_left=str(config.get("padding_side") or ("left" if pad_left else "right")) == "left",
        lower=bool(config.get("do_lower_case", True)),
        open_clip_clean=open_clip_clean,
        source=str(path),
    )
    tokenizer.pad_id = _special_id(tokenizer, "pad_token", config, special, pad)
    if file_name == SPIECE:
        tokenizer.eos_id = _special_id(tokenizer, "eos_token", config, special, "</s>")
    return tokenizer


def _special_id(tokenizer: FileTokenizer, role: str, config: dict[str, Any], special: dict[str, Any], default: str) -> int:
    value = config.get(role) or special.get(role) or default
    token = value.get("content") if isinstance(value, dict) else value
    found = token_id(tokenizer, str(token))
    if found is None:
        raise UserError(f"{tokenizer.source}: its {role.replace('_', ' ')} {token!r} is not in its vocabulary")
    return found


def _json_if_present(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


META_TOKENIZER = "clipsan.tokenizer"  # safetensors metadata: the SigLIP tokenizer written beside clipsan's file, and its settings


# What tokenizer_record writes, with each field's type: FileTokenizer's settings as its dataclass declares
# them (not its bytes, where it was read, its backend or the model's limit), then the file and its hash.
_NOT_RECORDED = ("data", "source", "_backend", "vocab_limit")
_SETTING_TYPES = get_type_hints(FileTokenizer)
_SETTINGS = [f.name for f in fields(FileTokenizer) if f.name not in _NOT_RECORDED]
_RECORD_FIELDS = {**{name: _SETTING_TYPES[name] for name in _SETTINGS}, "file": str, "sha256": str}


def tokenizer_record(tokenizer: FileTokenizer, file_name: str) -> str:
    """What clipsan's safetensors output says of the tokenizer file it writes beside itself (``file_name``)."""
    settings = {name: getattr(tokenizer, name) for name in _SETTINGS}
    return json.dumps({**settings, "file": file_name, "sha256": tokenizer.sha256}, sort_keys=True)


def _read_record(path: Path, recorded: str) -> dict[str, Any]:
    """The record's settings, each of the type and among the values clipsan writes, or a one-line UserError."""
    try:
        settings = json.loads(recorded)
    except ValueError as err:
        raise UserError(f"{path}: metadata {META_TOKENIZER} is not JSON ({err})") from None

    def fits(key: str, kind) -> bool:
        value = settings[key]
        return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))  # JSON's true is no id

    well_typed = isinstance(settings, dict) and set(settings) == set(_RECORD_FIELDS) and all(fits(k, kind) for k, kind in _RECORD_FIELDS.items())
    known = well_typed and settings["file_name"] in TOKENIZER_FILE_NAMES and settings["style"] in STYLES
    if not known or settings["open_clip_clean"] not in (None, *OPEN_CLIP_CLEAN):
        raise UserError(f"{path}: metadata {META_TOKENIZER} is not a tokenizer record as clipsan writes it (fields {', '.join(_RECORD_FIELDS)})")
    return settings


def tokenizer_beside(path: Path, metadata: dict[str, str], context_length: int, open_clip_clean: str | None) -> FileTokenizer:
    """The tokenizer of a SigLIP weights file given alone: the one clipsan's metadata names, else the folder's own."""
    recorded = metadata.get(META_TOKENIZER)
    if not recorded:
        return siglip_tokenizer(path.parent, context_length, open_clip_clean=open_clip_clean, for_file=path)
    settings = _read_record(path, recorded)
    file, sha256 = path.parent / Path(settings.pop("file")).name, settings.pop("sha256")
    tokenizer = FileTokenizer(data=file.read_bytes() if file.is_file() else b"", source=str(file), **settings)
    if tokenizer.sha256 != sha256:
        state = "is missing" if not tokenizer.data else "is not the one it was written with (sha256 differs)"
        raise UserError(f"{path}: its tokenizer {file} {state}; clipsan writes a SigLIP model's tokenizer beside its weights file")
    tokenizer.context_length = int(context_length)
    return tokenizer


def fit_to_model(tokenizer: FileTokenizer, vocab_size: int) -> FileTokenizer:
    """Bind a SigLIP tokenizer to its model: its pad and end ids are rows of the model's embedding, and so is every id it emits."""
    for role, index in (("pad", tokenizer.pad_id), ("end-of-text", tokenizer.eos_id)):
        if index is not None and not 0 <= index < min(vocab_size, tokenizer.vocab_size):
            raise UserError(f"{tokenizer.source}: its {role} token id {index} is not in its vocabulary and the model's ({vocab_size} tokens)")
    tokenizer.vocab_limit = int(vocab_size)
    return tokenizer
