"""Image<->text retrieval on caption pairs: a model's utility measured without labels.

Pair i's image should find caption i among all the set's captions (image->text, i2t), and caption i
image i (text->image, t2i); R@k is the share of pairs whose own match ranks in the top k. The rank
is by cosine similarity of the unit features: a positive logit scale and SigLIP's bias (one for
every pair) change no rank, so the same rule serves CLIP and SigLIP models. A candidate exactly as
similar as the match does not push it down (a caption repeated in the set is not held against the
model). Figures are compared across a run (and with a threshold later), so everything here is fp32,
the towers included, whatever --precision the run trains in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clipsan.config.evidence import RETRIEVAL_KS
from clipsan.data.tokens import drop_padding
from clipsan.engine.runtime import Runtime
from clipsan.evaluation.loader import labelled_batches

QUERY_ROWS = 1024  # similarity rows computed at once: memory stays O(rows x pairs), not O(pairs^2)


def match_ranks(queries: torch.Tensor, keys: torch.Tensor, rows: int = QUERY_ROWS) -> torch.Tensor:
    """For each query i, how many keys are strictly more similar to it than key i (0 = ranked first)."""
    ranks = []
    for start in range(0, queries.shape[0], rows):
        similarity = queries[start : start + rows] @ keys.T
        own = similarity.diagonal(offset=start).unsqueeze(1)
        ranks.append((similarity > own).sum(dim=1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def recall_at_k(image_features: torch.Tensor, text_features: torch.Tensor, ks: Sequence[int] = RETRIEVAL_KS) -> dict[str, dict[str, float | None]]:
    """R@k both ways for row-aligned fp32 unit features: {"i2t": {"1": f, "5": f}, "t2i": {...}};
    None for each figure of an empty set (nothing to measure)."""
    directions = {"i2t": (image_features, text_features), "t2i": (text_features, image_features)}
    recalls = {}
    for name, (queries, keys) in directions.items():
        ranks = match_ranks(queries.float(), keys.float())
        recalls[name] = {str(k): (int((ranks < k).sum()) / len(ranks) if len(ranks) else None) for k in ks}
    return recalls


class _Images:
    """A caption set's images as the labelled loader reads a set (the label slot unused)."""

    def __init__(self, pairs: Any):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int):
        image, _ = self.pairs.load(index)
        return image, 0


def pair_features(model: Any, pairs: Any, device: torch.device, *, batch_size: int, workers: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """fp32 unit image and text features of ``pairs`` (rows aligned, in set order) and how many
    pairs were left out because their image cannot be read."""
    rt = Runtime(device, "fp32")
    images, texts, corrupt = [], [], 0
    loader = labelled_batches(_Images(pairs), model.image_size, batch_size, workers, pin_memory=device.type == "cuda")
    for batch in loader:
        corrupt += batch["corrupt"]
        if batch["images"] is None:
            continue
        tokens = drop_padding(model.tokenize([pairs.caption(int(i)) for i in batch["ids"]]))
        images.append(rt.encode(model.encode_image, batch["images"].to(device, non_blocking=True)))
        texts.append(rt.encode(model.encode_text, tokens.to(device)))
    if not images:
        empty = torch.zeros(0, 0, device=device)
        return empty, empty, corrupt
    return torch.cat(images), torch.cat(texts), corrupt


@dataclass(frozen=True)
class Retrieval:
    recalls: dict[str, dict[str, float | None]]  # recall_at_k's {"i2t": {"1": f, "5": f}, "t2i": {...}}
    pairs: int  # pairs measured
    corrupt_image: int  # pairs left out: their image cannot be read


def retrieval(model: Any, pairs: Any, device: torch.device, *, batch_size: int, workers: int = 0) -> Retrieval:
    """``model``'s retrieval R@k on ``pairs``, batched on ``device``; inference only, the model's
    train/eval mode restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image_features, text_features, corrupt = pair_features(model, pairs, device, batch_size=batch_size, workers=workers)
            recalls = recall_at_k(image_features, text_features)
    finally:
        model.train(was_training)
    return Retrieval(recalls, int(image_features.shape[0]), corrupt)
