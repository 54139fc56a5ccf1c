"""OpenAI's QuickGELU, keeping only its input for backward: the same numbers, bit for bit."""

from __future__ import annotations

import pytest
import torch

from clipsan.models import arch_with_activation, create_model
from clipsan.models.quick_gelu import LeanQuickGELU
from clipsan.openclip import open_clip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_and_gradients_are_bitwise_open_clips(dtype):
    torch.manual_seed(0)
    x = (torch.randn(4, 77, 256) * 4).to(dtype).requires_grad_()
    upstream = torch.randn(4, 77, 256).to(dtype)
    theirs = open_clip.transformer.QuickGELU()(x)
    ours = LeanQuickGELU()(x)
    assert torch.equal(theirs, ours)
    assert torch.equal(*(torch.autograd.grad(y, x, upstream)[0] for y in (theirs, ours)))


def _saved_bytes(fn, x) -> int:
    sizes = {}

    def pack(t):
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(sizes.values())


def test_it_keeps_one_tensor_for_backward_where_open_clips_keeps_two():
    x = torch.randn(8, 512, requires_grad=True)
    assert _saved_bytes(LeanQuickGELU(), x) * 2 == _saved_bytes(open_clip.transformer.QuickGELU(), x)


def test_quickgelu_models_use_it_and_keep_open_clips_state_dict():
    arch = arch_with_activation("clipsan-tiny-rn", True)
    model = create_model(arch)
    assert not any(type(m) is open_clip.transformer.QuickGELU for m in model.modules())
    assert sum(isinstance(m, LeanQuickGELU) for m in model.modules()) == 3  # one per text block
    torch.manual_seed(0)
    reference = open_clip.create_model(arch, pretrained=None)
    assert model.clip.state_dict().keys() == reference.state_dict().keys()
