"""Trigger contracts: fixed seeded patterns, scaling with input size, [0, 1] outputs, exact spec round trips."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from clipsan.attacks.triggers import (
    BadNetTrigger,
    PatchTrigger,
    WaNetTrigger,
    parse_trigger,
    trigger_from_spec,
)
from clipsan.errors import UserError

SEEDED = ["badnet", "blended", "wanet"]
ALL_SPECS = ["badnet", "badnet@3,5", "blended", "blended:ratio=0.3", "sig", "sig:delta=0.1,freq=3", "wanet", "wanet:k=8,s=1"]


def random_images(batch: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand((batch, 3, size, size), generator=torch.Generator().manual_seed(seed))


def changed_box(before: torch.Tensor, after: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the pixels that differ in a (3, H, W) image."""
    rows, cols = torch.nonzero((before != after).any(dim=0), as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.fixture()
def png_patch(tmp_path):
    pixels = (torch.arange(3 * 4 * 6).reshape(3, 4, 6) * 3 % 256).to(torch.uint8)
    path = tmp_path / "patch.png"
    Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB").save(path)
    return path, pixels.float() / 255


@pytest.mark.parametrize("name", SEEDED)
def test_same_seed_same_pattern_different_seed_different(name):
    images = random_images()
    ids = [0, 1, 2]
    first = parse_trigger(name, seed=7).apply(images, ids)
    again = parse_trigger(name, seed=7).apply(images, ids)
    other = parse_trigger(name, seed=8).apply(images, ids)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("spec", ALL_SPECS + ["patch"])
def test_outputs_in_range_input_untouched_dtype_kept(spec, png_patch):
    trigger = parse_trigger(f"patch:{png_patch[0]}" if spec == "patch" else spec, seed=1)
    for dtype in (torch.float32, torch.float64, torch.float16):
        images = random_images(size=20).to(dtype)
        before = images.clone()
        out = trigger.apply(images, torch.tensor([4, 5, 6]))
        assert torch.equal(images, before)
        assert out.shape == images.shape and out.dtype == dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert not torch.equal(out, images)


def test_non_square_images_work():
    images = random_images(batch=2, size=40)[:, :, :24, :]
    for spec in ALL_SPECS:
        assert parse_trigger(spec).apply(images, [0, 1]).shape == images.shape


@pytest.mark.parametrize("size,side", [(224, 16), (448, 32), (32, 2), (7, 1)])
def test_badnet_side_scales_with_input(size, side):
    trigger = BadNetTrigger(seed=3, position=(0, 0))
    images = torch.full((1, 3, size, size), 0.5)
    assert trigger.side(size, size) == side
    assert changed_box(images[0], trigger.apply(images, [0])[0]) == (0, 0, side, side)


def test_badnet_size_override_is_absolute_pixels():
    assert parse_trigger("badnet", size=8).side(32, 32) == 8
    assert parse_trigger("badnet", size=8).side(224, 224) == 8


def test_badnet_patch_is_image_mean_plus_fixed_noise():
    trigger = BadNetTrigger(seed=5, position=(2, 3))
    image = random_images(batch=1, size=32)
    out = trigger.apply(image, [0])[0]
    side = trigger.side(32, 32)
    expected = (image[0].mean(dim=(1, 2))[:, None, None] + trigger.noise(side)).clamp(0, 1)
    assert torch.allclose(out[:, 3 : 3 + side, 2 : 2 + side], expected)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[3 : 3 + side, 2 : 2 + side] = False
    assert torch.equal(out[:, outside], image[0][:, outside])


def test_badnet_positions_vary_per_sample_and_are_reproducible():
    trigger = BadNetTrigger(seed=0)
    corners = [trigger.corner(i, 224, 224) for i in range(20)]
    assert len(set(corners)) > 15
    assert corners == [BadNetTrigger(seed=0).corner(i, 224, 224) for i in range(20)]
    assert all(0 <= x <= 224 - 16 and 0 <= y <= 224 - 16 for x, y in corners)
    images = torch.full((2, 3, 64, 64), 0.5)
    out = trigger.apply(images, [11, 12])
    assert torch.equal(out[0], trigger.apply(images[:1], [11])[0])  # position follows the id, not the batch slot
    assert changed_box(images[0], out[0])[:2] != changed_box(images[1], out[1])[:2]


def test_badnet_random_position_needs_sample_ids():
    with pytest.raises(ValueError):
        BadNetTrigger().apply(random_images(), None)


def test_blended_formula():
    trigger = parse_trigger("blended", seed=2)
    images = random_images(size=16)
    expected = 0.8 * images + 0.2 * trigger.noise(16, 16)
    assert torch.allclose(trigger.apply(images), expected, atol=1e-6)


def test_sig_formula_on_constant_image():
    images = torch.full((1, 3, 8, 48), 0.5)
    out = parse_trigger("sig").apply(images)
    j = torch.arange(48, dtype=torch.float64)
    expected = (0.5 + (60 / 255) * torch.sin(2 * math.pi * 6 * j / 48)).float()
    assert torch.allclose(out[0, 1, 5], expected, atol=1e-6)
    assert torch.equal(out[0, 0], out[0, 2])


def test_wanet_zero_strength_is_identity_and_default_warps_gently():
    images = random_images(size=24)
    assert torch.allclose(WaNetTrigger(seed=1, s=0.0).apply(images), images, atol=1e-5)
    smooth = torch.nn.functional.interpolate(random_images(size=6), size=64, mode="bilinear", align_corners=True)
    warped = WaNetTrigger(seed=1).apply(smooth)
    difference = (warped - smooth).abs().mean()
    assert 0 < difference < 0.05


def test_patch_centre_and_position(png_patch):
    path, pixels = png_patch
    images = torch.zeros((1, 3, 20, 20))
    centred = parse_trigger(f"patch:{path}").apply(images)[0]
    assert torch.equal(centred[:, 8:12, 7:13], pixels)
    placed = parse_trigger(f"patch:{path}@1,2").apply(images)[0]
    assert torch.equal(placed[:, 2:6, 1:7], pixels)
    assert placed.sum() == pixels.sum()


def test_patch_scales_only_when_told(tmp_path):
    patch = torch.rand((3, 4, 4))
    plain, scaled = tmp_path / "plain.safetensors", tmp_path / "scaled.safetensors"
    save_file({"patch": patch}, plain)
    save_file({"patch": patch}, scaled, metadata={"reference_size": "32"})
    images = torch.full((1, 3, 64, 64), 0.5)
    assert changed_box(images[0], parse_trigger(f"patch:{plain}").apply(images)[0])[2:] == (4, 4)
    assert changed_box(images[0], parse_trigger(f"patch:{scaled}").apply(images)[0])[2:] == (8, 8)
    assert changed_box(images[0], parse_trigger(f"patch:{plain}", size=6).apply(images)[0])[2:] == (6, 6)
    unscaled = parse_trigger(f"patch:{plain}").apply(images)[0]
    assert torch.equal(unscaled[:, 30:34, 30:34], patch)


def test_reference_size_in_png_text(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("reference_size", "16")
    path = tmp_path / "p.png"
    Image.new("RGB", (2, 2), (255, 0, 0)).save(path, pnginfo=info)
    assert parse_trigger(f"patch:{path}").patch_at(32, 32).shape == (3, 4, 4)


@pytest.mark.parametrize("spec", ALL_SPECS + ["patch", "safetensors", "badclip"])
def test_spec_round_trip_is_exact(spec, png_patch, tmp_path):
    if spec == "patch":
        trigger = parse_trigger(f"patch:{png_patch[0]}@2,1", seed=4)
    elif spec == "safetensors":
        save_file({"patch": torch.rand((3, 5, 3))}, tmp_path / "p.safetensors", metadata={"reference_size": "16"})
        trigger = parse_trigger(f"patch:{tmp_path / 'p.safetensors'}")
    elif spec == "badclip":
        trigger = PatchTrigger(torch.rand((3, 4, 4)), name="badclip", seed=9)
    else:
        trigger = parse_trigger(spec, seed=4, size=6 if spec.startswith("badnet") else None)
    spec_dict = json.loads(json.dumps(trigger.to_spec()))
    rebuilt = trigger_from_spec(spec_dict)
    assert rebuilt.to_spec() == trigger.to_spec()
    images = random_images(size=24)
    assert torch.equal(rebuilt.apply(images, [0, 1, 2]), trigger.apply(images, [0, 1, 2]))
    unpickled = pickle.loads(pickle.dumps(trigger))  # triggers travel to data-loader workers
    assert torch.equal(unpickled.apply(images, [0, 1, 2]), trigger.apply(images, [0, 1, 2]))


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("nope", "unknown trigger 'nope'"),
        ("blended:ratio=2", "ratio must be in [0, 1]"),
        ("blended:alpha=0.1", "unknown option 'alpha'"),
        ("wanet:k=x", "must be numbers"),
        ("sig@1,2", "only badnet, badnet-stripes and patch"),
        ("badclip", "from-metadata"),
        ("patch:/does/not/exist.png", "patch file not found"),
    ],
)
def test_bad_specs_are_user_errors(spec, fragment):
    with pytest.raises(UserError, match=r"expected|only|unknown|must|from-metadata"):
        try:
            parse_trigger(spec)
        except UserError as err:
            assert fragment in str(err)
            raise


def test_bad_patch_files(tmp_path):
    not_image = tmp_path / "junk.png"
    not_image.write_bytes(b"not a png")
    wrong_shape = tmp_path / "wrong.safetensors"
    save_file({"patch": torch.rand((4, 4))}, wrong_shape)
    no_patch = tmp_path / "none.safetensors"
    save_file({"other": torch.rand((3, 4, 4))}, no_patch)
    out_of_range = tmp_path / "range.safetensors"
    save_file({"patch": torch.full((3, 2, 2), 2.0)}, out_of_range)
    for path in (not_image, wrong_shape, no_patch, out_of_range):
        with pytest.raises(UserError, match=r"\.safetensors file with a tensor 'patch'") as err:
            parse_trigger(f"patch:{path}")
        assert str(path) in str(err.value)


def test_size_only_for_badnet_and_patch():
    with pytest.raises(UserError, match="size applies only"):
        parse_trigger("blended", size=4)


def test_patch_too_big_for_image(png_patch):
    with pytest.raises(UserError, match="does not fit"):
        parse_trigger(f"patch:{png_patch[0]}").apply(torch.zeros((1, 3, 3, 3)))


def test_malformed_spec_dict():
    with pytest.raises(UserError, match="trigger spec"):
        trigger_from_spec({"name": "blended"})
    with pytest.raises(UserError, match="unknown trigger"):
        trigger_from_spec({"name": "magic"})
