"""Per-sample randomness derived from (seed, epoch, index, stream).

Nothing in a data pipeline may draw from global RNG state or depend on which
worker handles a sample: that is what makes results independent of
``--workers`` and a resumed run equal to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import random

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and runs)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def sample_rng(seed: int, epoch: int, index: int, stream: str) -> random.Random:
    """A Python RNG for one sample in one epoch, for one purpose (``stream``)."""
    return random.Random(derive_seed(seed, epoch, index, stream))


def sample_generator(seed: int, epoch: int, index: int, stream: str) -> torch.Generator:
    """A torch CPU generator for one sample in one epoch, for one purpose (``stream``)."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch, index, stream))
