"""AdamW's moments can be allocated before the first step (so they sit below a step's activations
in a CPU heap) without changing a single result."""

from __future__ import annotations

import torch

from clipsan.engine import optim
from clipsan.models import create_model


def _train(allocate_first: bool, steps: int = 3):
    torch.manual_seed(0)
    model = create_model("clipsan-tiny-rn").train()
    optimizer = optim.build_optimizer(model, lr=1e-3)
    if allocate_first:
        optim.allocate_state(optimizer)
        assert all(len(optimizer.state[p]) == 3 for p in model.parameters())
    images, tokens = torch.rand(4, 3, 32, 32), model.tokenize(["a red circle", "a blue square", "two dots", "a cat"])
    for _ in range(steps):
        image_features, text_features = model(images, tokens)
        loss = -(image_features * text_features).sum() * model.logit_scale.exp()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model, optimizer


def test_allocated_state_trains_bitwise_like_adamws_own_lazy_state():
    lazy_model, lazy = _train(allocate_first=False)
    early_model, early = _train(allocate_first=True)
    for (name, a), b in zip(lazy_model.state_dict().items(), early_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    lazy_state, early_state = lazy.state_dict()["state"], early.state_dict()["state"]
    assert lazy_state.keys() == early_state.keys()
    for index, moments in lazy_state.items():  # the same keys, dtypes and devices: checkpoints do not change
        for key, value in moments.items():
            other = early_state[index][key]
            assert (value.dtype, value.device, value.shape) == (other.dtype, other.device, other.shape), (index, key)
            assert torch.equal(value, other), (index, key)


def test_allocating_state_keeps_state_already_loaded():
    model, optimizer = _train(allocate_first=False, steps=1)
    before = {k: v.clone() for k, v in optimizer.state[next(model.parameters())].items()}
    optim.allocate_state(optimizer)  # a resumed run: the checkpoint's moments stay
    after = optimizer.state[next(model.parameters())]
    assert all(torch.equal(before[k], after[k]) for k in before)
