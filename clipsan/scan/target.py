"""Naming the likely backdoor target: zero-shot match of the collapsed embedding.

A backdoor aligns triggered images with its target's captions in the suspect's
own embedding space, so the point the inverted trigger collapses images to is
read with the suspect's text encoder, against class names (the world's, or a
labelled --data set's) and the noun bank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipsan.evaluation.templates import PHOTO_TEMPLATE
from clipsan.evaluation.zeroshot import class_text_embeddings
from clipsan.text.wordbanks import nouns

TOP = 5


def _ranked(texts: torch.Tensor, embedding: torch.Tensor, names: list[str], source: str) -> list[dict]:
    sims = (texts @ embedding.to(texts)).tolist()
    order = sorted(range(len(names)), key=lambda i: -sims[i])[:TOP]
    return [{"label": names[i], "similarity": round(sims[i], 6), "source": source} for i in order]


@torch.no_grad()
def name_target(model, collapsed: torch.Tensor, classnames: list[str] | None, rt, probe_embeddings: torch.Tensor | None = None) -> dict:
    """{label, similarity, source, template, candidates[], probe_similarity}: the best class name if
    there are class names (the vocabulary a zero-shot user would query), else the best noun;
    candidates lists the top matches of both vocabularies. probe_similarity: the 95th percentile,
    over clean probe images, of each image's best match in the same vocabulary - how well a natural
    image matches a text, to compare `similarity` with (a backdoor's collapse point sits on its
    target's caption, closer than natural images get)."""
    embedding = F.normalize(collapsed.float().flatten(), dim=0)
    known = set(classnames or [])
    noun_names = [n for n in nouns() if n not in known]
    noun_texts = class_text_embeddings(model, noun_names, [PHOTO_TEMPLATE], rt)
    by_noun = _ranked(noun_texts, embedding, noun_names, "nouns")
    vocabulary = noun_texts
    by_class: list[dict] = []
    if classnames:
        class_texts = class_text_embeddings(model, list(classnames), [PHOTO_TEMPLATE], rt)
        by_class = _ranked(class_texts, embedding, list(classnames), "classnames")
        vocabulary = class_texts
    best = (by_class or by_noun)[0]
    probe_similarity = None
    if probe_embeddings is not None:
        per_image_best = (probe_embeddings.float().to(vocabulary) @ vocabulary.T).max(dim=1).values
        probe_similarity = round(float(torch.quantile(per_image_best, 0.95)), 6)
    return {**best, "template": PHOTO_TEMPLATE, "candidates": by_class + by_noun, "probe_similarity": probe_similarity}
