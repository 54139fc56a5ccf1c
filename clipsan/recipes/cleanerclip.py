"""CleanerCLIP (Xun et al., 2024): CleanCLIP plus factual/counterfactual sub-caption contrast."""

from __future__ import annotations

import functools
import math
import random

import torch

from clipsan.config import CleanerCLIPConfig
from clipsan.engine.loader import epoch_permutation, steps_per_epoch
from clipsan.recipes.cleanclip import CleanCLIP
from clipsan.recipes.losses import positive_negative_loss
from clipsan.seeding import derive_seed
from clipsan.text.subcaptions import SubcaptionMaker

# Unselected samples still need a string in every view so batches stack; it is never encoded.
PLACEHOLDER = ""


@functools.lru_cache(maxsize=1)
def subcaption_maker() -> SubcaptionMaker:
    # One per process (data workers inherit it when forked), holding spaCy and the parse cache.
    return SubcaptionMaker()


def epoch_subset(n: int, k: int, seed: int, epoch: int) -> frozenset[int]:
    """The K indices that get sub-captions in ``epoch``: uniform without replacement, from (seed, epoch)."""
    return frozenset(random.Random(derive_seed(seed, epoch, "cleanerclip-subset")).sample(range(n), min(k, n)))


def spread(count: int, steps: int) -> list[int]:
    """``count`` distinct steps of ``steps``, evenly spaced: the j-th at floor((j + 1/2) * steps / count)."""
    return [int((j + 0.5) * steps / count) for j in range(count)]


def epoch_order(n: int, batch: int, k: int, seed: int, epoch: int) -> list[int]:
    """One epoch's global batches, concatenated: the K selected pairs in batches of their own.

    Both groups keep the engine's seeded permutation order. The selected pairs fill
    ceil(K / batch) batches, the last completed with selected pairs from the first (so every
    L_p-n contrast set has ``batch`` pairs); K < batch gives one batch holding all K, completed
    with unselected pairs (which only the CleanCLIP term sees). Those batches take evenly
    spaced steps of the epoch (``spread``); the unselected pairs fill the others, and what
    does not fit is dropped, as the engine drops an incomplete last batch.
    """
    steps = steps_per_epoch(n, batch)
    permutation = epoch_permutation(n, seed, epoch)
    chosen = epoch_subset(n, k, seed, epoch)
    selected = [i for i in permutation if i in chosen]
    others = [i for i in permutation if i not in chosen]
    if not selected:
        return permutation
    if len(selected) < batch:
        own = [selected + others[: batch - len(selected)]]
        others = others[batch - len(selected) :]
    else:
        count = min(steps, math.ceil(len(selected) / batch))  # more than an epoch's batches only when K ~ N
        padded = (selected + selected)[: count * batch]
        own = [padded[j * batch : (j + 1) * batch] for j in range(count)]
    at = dict(zip(spread(len(own), steps), own))
    order, taken = [], 0
    for step in range(steps):
        if step in at:
            order += at[step]
        else:
            order += others[taken : taken + batch]
            taken += batch
    return order


class CleanerCLIP(CleanCLIP):
    """α·L_CleanCLIP + β·L_p-n (CleanerCLIP eq. 4).

    Each epoch K pairs, drawn from (seed, epoch), get a factual positive
    sub-caption ST_p and a counterfactual negative ST_n (``SubcaptionMaker``), and
    are trained in batches of their own, interleaved through the epoch
    (``epoch_order``): Algorithm 1 contrasts the K pairs with each other, so each such
    batch is an L_p-n contrast set of the batch size (all K when K is smaller), at
    any K/N. The CleanCLIP term runs on every batch. L_p-n = ½(loss_i2t + loss_t2i)
    over the selected pairs of the global batch, with fixed temperatures t_p on the
    positive-set logits and t_n on the negative ones, cosine similarities (no
    learned scale):

      loss_i2t(i) = -log e^{<z_i^I,z_i^p>/t_p} / (Σ_j e^{<z_i^I,z_j^p>/t_p} + Σ_k e^{<z_i^I,z_k^n>/t_n})
      loss_t2i(i) = -log e^{<z_i^T,z_i^I>/t_p} / (Σ_j e^{<z_i^T,z_j^I>/t_p} + Σ_k e^{<z_i^T,z_k^n>/t_n})

    j, k run over the selected pairs of the global batch; the loss is 0 in the
    other batches. The paper writes the first denominator sum as
    Σ_j <z_j^I, z_j^p> (matched pairs, independent of i), which reads as a typo for
    the in-batch form above, implemented here.

    Terms: ``clip``/``inmodal_image``/``inmodal_text`` are CleanCLIP's scaled by α;
    ``pn_i2t`` = β·½·loss_i2t and ``pn_t2i`` = β·½·loss_t2i.
    """

    config_type = CleanerCLIPConfig

    def __init__(self, config: CleanerCLIPConfig = CleanerCLIPConfig()) -> None:
        super().__init__(config)
        self.subcaptions_per_epoch = config.subcaptions_per_epoch
        self.t_pos, self.t_neg = config.t_pos, config.t_neg
        self.alpha, self.beta = config.alpha, config.beta
        self.dataset_size: int | None = None
        self._subset_key: tuple | None = None
        self._subset: frozenset[int] = frozenset()

    def prepare(self, captions) -> None:
        self.dataset_size = len(captions)
        if self.subcaptions_per_epoch:
            subcaption_maker().parse("a photo of a dog")  # load spaCy once, before workers fork

    def epoch_order(self, n: int, global_batch: int, seed: int):
        if not self.subcaptions_per_epoch:
            return None  # no selected pairs: the engine's batches, as CleanCLIP's
        return functools.partial(epoch_order, n, global_batch, self.subcaptions_per_epoch, seed)

    def selected(self, seed: int, epoch: int) -> frozenset[int]:
        if self.dataset_size is None:
            raise RuntimeError("CleanerCLIP.prepare(captions) must be called before training")
        if self._subset_key != (seed, epoch):  # each worker draws the epoch's subset once
            self._subset = epoch_subset(self.dataset_size, self.subcaptions_per_epoch, seed, epoch)
            self._subset_key = (seed, epoch)
        return self._subset

    def views(self, sample) -> dict:
        views = super().views(sample)
        if sample.index in self.selected(sample.seed, sample.epoch):
            maker = subcaption_maker()
            negative, _component = maker.negative(sample.caption, sample.rng("negative-subcaption"))
            views.update(subcaption_pos=maker.positive(sample.caption), subcaption_neg=negative, subcaption_mask=torch.tensor(1))
        else:
            views.update(subcaption_pos=PLACEHOLDER, subcaption_neg=PLACEHOLDER, subcaption_mask=torch.tensor(0))
        return views

    def device_views(self, batch, host):
        # Which rows carry sub-captions is decided on the host, so the step never reads the device for it.
        batch["selected_rows"] = host["subcaption_mask"].nonzero().flatten()
        return super().device_views(batch, host)

    def loss_terms(self, model, batch, rt):
        f = self.encode_views(model, batch, rt)
        terms = self.cleanclip_terms(f, weight=self.alpha)
        local_rows = batch.get("selected_rows")  # host tensor: positions in this process's shard
        if local_rows is None:  # called outside the training loop, without device_views
            local_rows = batch["subcaption_mask"].nonzero().flatten().cpu()
        global_rows = rt.gather_host_rows(local_rows, batch["subcaption_mask"].shape[0])  # positions in the global batch
        if len(global_rows):
            positives, negatives = self._encode_subcaptions(model, batch, local_rows, f.texts, rt)
            on_device = global_rows.to(f.images.device, non_blocking=True)
            i2t, t2i = positive_negative_loss(f.images[on_device], f.texts[on_device], positives, negatives, self.t_pos, self.t_neg)
        else:
            i2t = t2i = f.texts.new_zeros((), dtype=torch.float32)
        terms["pn_i2t"] = self.beta * 0.5 * i2t
        terms["pn_t2i"] = self.beta * 0.5 * t2i
        return terms

    @staticmethod
    def _encode_subcaptions(model, batch, local_rows: torch.Tensor, like: torch.Tensor, rt):
        """Sub-caption features of the selected rows only, gathered in rank order."""
        k = len(local_rows)
        if k:
            rows = local_rows.to(like.device, non_blocking=True)
            pos, neg = batch["subcaption_pos"][rows], batch["subcaption_neg"][rows]
            both = rt.encode(model.encode_text, torch.cat([pos, neg]))
            pairs = torch.stack([both[:k], both[k:]], dim=1)
        else:  # other ranks hold selected rows; this one contributes none
            pairs = like.new_zeros((0, 2, like.shape[1]))
        pairs = rt.gather_varying(pairs)  # k differs between processes
        return pairs[:, 0], pairs[:, 1]
