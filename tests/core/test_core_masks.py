"""Mask loading (reference rule) and resizing to attention-layer grids."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import magicface_attn as mf

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=30)


def test_reference_mode_keeps_only_255_and_resizes_to_128():
    mask = torch.zeros(256, 512, dtype=torch.uint8)
    mask[:, :256] = 254  # anti-aliased / JPEG-damaged foreground is dropped by the reference
    mask[:, 256:] = 255
    out = mf.reference_mode_mask(mask)
    assert out.shape == (128, 128) and out.dtype == torch.bool
    assert not out[:, :64].any() and out[:, 64:].all()


def test_reference_mode_matches_torch_nearest_resize():
    mask = (torch.rand(300, 200) * 256).to(torch.uint8)
    mask[mask > 128] = 255
    torch_rule = torch.nn.functional.interpolate(mask[None, None], size=(128, 128), mode="nearest")[0, 0]
    assert torch.equal(mf.reference_mode_mask(mask), (torch_rule / 255.0).to(torch.uint8) > 0)


@pytest.mark.parametrize("h, w", [(64, 64), (32, 32), (16, 16)])
def test_nearest_takes_every_kth_pixel_from_zero(h, w):
    masks = torch.rand(3, 128, 128) > 0.5
    expected = masks[:, :: 128 // h, :: 128 // w].reshape(3, h * w)
    assert torch.equal(mf.mask_to_layer(masks, h, w, mode="nearest"), expected)


@PROPERTY
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 24), st.integers(1, 24))
def test_non_square_nearest_formula(src_h, src_w, h, w):
    masks = torch.rand(2, src_h, src_w) > 0.5
    out = mf.mask_to_layer(masks, h, w).view(2, h, w)
    for y in range(h):
        for x in range(w):
            assert torch.equal(out[:, y, x], masks[:, y * src_h // h, x * src_w // w])


def test_area_mode_thresholds_coverage():
    masks = torch.zeros(1, 8, 8)
    masks[0, :, :3] = 1.0  # 3/4 of the left 4-wide cell, nothing of the right one
    out = mf.mask_to_layer(masks, 1, 2, mode="area")
    assert out.tolist() == [[True, False]]
    assert mf.mask_to_layer(masks, 1, 2, mode="area", threshold=0.8).tolist() == [[False, False]]


def test_area_mode_keeps_thin_structures_nearest_misses():
    masks = torch.zeros(1, 128, 128)
    masks[0, :, 1:3] = 1.0  # two-pixel-wide line, off the every-4th sampling grid
    assert not mf.mask_to_layer(masks, 32, 32, mode="nearest").any()
    assert mf.mask_to_layer(masks, 32, 32, mode="area", threshold=0.5).any()


def test_rejects_unknown_mode():
    with pytest.raises(ValueError):
        mf.mask_to_layer(torch.ones(1, 4, 4), 2, 2, mode="bicubic")
