"""What a recipe is: per-sample views (run in data workers) and a loss over a batch.

The engine owns everything else: the optimizer, schedule, precision, data
parallelism, checkpoints and resume. A recipe that keeps its own state across
steps (e.g. a sampled subset, a discriminator) exposes it through
``state_dict``/``load_state_dict`` so resume restores it.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch

from clipsan.engine.loader import Sample
from clipsan.engine.runtime import Runtime

MAX_LOGIT_SCALE = math.log(100.0)


class Recipe:
    def __init__(self, config) -> None:
        self.config = config  # the recipe's settings (clipsan.config), recorded by ``options``

    @property
    def name(self) -> str:
        """The recipe's one id: its config's method (``--method``, config.json, the output's metadata)."""
        return self.config.method

    def views(self, sample: Sample) -> dict:
        """Tensors (or strings, tokenised by the loader) this recipe's loss needs for one sample."""
        raise NotImplementedError

    def device_views(self, batch: dict, host: dict) -> dict:
        """Finish views on the device, where pixels are floats (a trigger or patch pasted on some rows).

        ``batch`` is on the device; ``host`` is the same batch as the workers shipped it
        (CPU tensors), for decisions that must not wait for the device.
        """
        return batch

    def loss_terms(self, model, batch: dict, rt: Runtime) -> dict[str, torch.Tensor]:
        """Named, already-weighted loss terms over the *global* batch; the engine sums them.

        Runs outside autocast: encode through ``rt.encode`` (the towers in the run's
        precision, fp32 features out), so the loss math is fp32."""
        raise NotImplementedError

    def after_step(self, model) -> None:
        # CLIP's temperature is clamped to at most 100 after every update. SigLIP's training has no
        # such bound (its scale is calibrated with its bias): a sigmoid model's is only kept >= 1.
        scale = getattr(model, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            with torch.no_grad():
                scale.clamp_(0.0, None if getattr(model, "is_sigmoid", False) else MAX_LOGIT_SCALE)

    def prepare(self, captions) -> None:
        """Called once with the training pairs before training starts (before data workers fork).

        For recipes whose views depend on dataset-wide facts, such as its size.
        """

    def prepare_run(self, job, training) -> None:
        """Work a recipe must do inside the run before training (after ``prepare``), e.g. ABD
        crafting its adversarial patch in a sub-folder of the run directory; resumable itself.
        ``job``: the training job (``clipsan.jobs.training.TrainingJob``: runtime, model, pairs,
        run directory, resume flag, notes); ``training``: its TrainConfig."""

    def epoch_order(self, n: int, global_batch: int, seed: int):
        """``None`` (batches are slices of the engine's seeded permutation), or a function
        epoch -> that epoch's global batches concatenated, for recipes that compose their own
        batches; it must depend on (seed, epoch) only, so resume and ``--workers`` cannot change it."""
        return None

    def begin_epoch(self, epoch: int) -> None:
        """Hook for per-epoch choices made on the main process (must be deterministic in epoch)."""

    def options(self) -> dict:
        """The recipe's settings, recorded in config.json."""
        return asdict(self.config)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def transform_flagged_images(batch: dict, host: dict, flag: str, transform, key: str = "image") -> dict:
    """On the device, replace the rows of ``batch[key]`` flagged by ``host[flag]`` with ``transform(images, rows)``.

    ``rows`` are the flagged rows' positions as a host tensor (for per-sample choices such as
    trigger positions); which rows are flagged is read from the host batch, never the device.
    """
    rows = host[flag].nonzero().flatten()
    if len(rows):
        images = batch[key]
        on_device = rows.to(images.device, non_blocking=True)
        images[on_device] = transform(images[on_device], rows)
    return batch


def encode_pair(model, images: torch.Tensor, tokens: torch.Tensor, rt: Runtime):
    """Global-batch image and text features (fp32, see ``Runtime.encode``) plus the (shared) logit
    scale and bias (None for CLIP): what ``losses.image_text_loss`` takes."""
    image_features = rt.gather(rt.encode(model.encode_image, images))
    text_features = rt.gather(rt.encode(model.encode_text, tokens))
    return (image_features, text_features, *calibration(model, rt))


def calibration(model, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's logit scale (exp'd) and SigLIP's logit bias (None for CLIP), shared across processes."""
    bias = getattr(model, "logit_bias", None)
    return rt.shared(model.logit_scale.exp()), None if bias is None else rt.shared(bias)
