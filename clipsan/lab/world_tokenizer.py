"""The SigLIP lab's tokenizer: one token per word of the synthetic world, as a tokenizer.json folder.

A SigLIP model tokenises with its checkpoint's own file (docs/siglip.md); the world has no such
file, so the lab writes one: a word-level ``tokenizers`` model over every word a caption, a class
name or a lab prompt can hold (``world.vocabulary`` plus the templates' words), lowercased, split
on whitespace and punctuation, ``</s>`` appended as SigLIP's tokenizers do, anything else
``<unk>``. Built from the word list alone (nothing trained, nothing downloaded): the same words
give the same file. The lab reads it back as a user's folder is read (``siglip_tokenizer``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from clipsan.atomic import atomic_write_bytes, write_errors
from clipsan.config.world import WorldConfig
from clipsan.data import world

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2, as SigLIP's spiece.model lays them out
PUNCTUATION = (".", ",")  # the prompts end with a period


def world_words(templates: tuple[str, ...], config: WorldConfig = WorldConfig()) -> list[str]:
    """The world's words, the prompt templates' words and punctuation, sorted."""
    prompt_words = re.findall(r"\w+", " ".join(t.replace("{}", " ") for t in templates).lower())
    return sorted(set(world.vocabulary(config)) | set(prompt_words) | set(PUNCTUATION))


def tokenizer_json(words: list[str]) -> str:
    """A tokenizer.json (``tokenizers``' format) with one id per word after the three special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: index for index, token in enumerate((PAD, EOS, UNK, *words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])])
    tokenizer.add_special_tokens([PAD, EOS, UNK])
    return tokenizer.to_str()


def write_world_tokenizer(folder: Path, templates: tuple[str, ...]) -> Path:
    """``folder``/tokenizer.json and tokenizer_config.json (read as a PreTrainedTokenizerFast); returns the folder."""
    with write_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": PAD, "eos_token": EOS, "unk_token": UNK}
    atomic_write_bytes(folder / "tokenizer.json", tokenizer_json(world_words(templates)).encode())
    atomic_write_bytes(folder / "tokenizer_config.json", (json.dumps(config, indent=2) + "\n").encode())
    return folder
