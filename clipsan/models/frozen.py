"""Models used as fixed feature extractors for a while (a crafting target, BadCLIP's clean model)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def frozen(*models):
    """Use models as fixed feature extractors (eval mode, no parameter gradients); restore them after."""
    saved = []
    for model in filter(None, models):
        saved.append((model, model.training, [p.requires_grad for p in model.parameters()]))
        model.eval()
        model.requires_grad_(False)
    try:
        yield
    finally:
        for model, training, flags in saved:
            model.train(training)
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
