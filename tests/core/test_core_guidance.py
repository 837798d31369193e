"""Semantic-aware CFG rate map and combination."""
import torch

import magicface_attn as mf


def test_rate_is_foreground_over_region_norm_clamped_and_blurred():
    uncond = torch.zeros(1, 4, 8, 8)
    cond = torch.zeros(1, 4, 8, 8)
    cond[:, 0, :, :4] = 1.0  # |delta| = 1 on the left half (token 1), 3 on the right (token 2)
    cond[:, 0, :, 4:] = 3.0
    regions = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    regions[0, 1, :, :2] = True
    regions[0, 2, :, 2:] = True
    fore = torch.ones(1, 4, 4, dtype=torch.bool)
    rate = mf.semantic_cfg_rate(uncond, cond, regions, fore, cfg=1.0)
    assert rate.shape == (1, 1, 8, 8)
    # foreground mean |delta| = 2: token 1 gets 2.0, token 2 gets 2/3 -> clamped to 0.8
    torch.testing.assert_close(rate[0, 0, :, 0], torch.full((8,), 2.0))
    torch.testing.assert_close(rate[0, 0, :, -1], torch.full((8,), 0.8))


def test_rate_is_capped_by_max_guidance_over_cfg_and_uncovered_pixels_get_the_floor():
    uncond, cond = torch.zeros(2, 4, 6, 10), torch.rand(2, 4, 6, 10) + 1
    regions = torch.zeros(2, 5, 3, 5, dtype=torch.bool)
    regions[:, 3, :2] = True
    fore = torch.ones(2, 3, 5, dtype=torch.bool)
    cond[:, :, :4] *= 0.01  # region much weaker than the foreground: rate hits the cap
    rate = mf.semantic_cfg_rate(uncond, cond, regions, fore, cfg=7.5)
    assert rate.shape == (2, 1, 6, 10)
    assert rate.max() <= mf.MAX_GUIDANCE / 7.5 + 1e-6
    torch.testing.assert_close(rate[:, :, -1], torch.full((2, 1, 10), mf.RATE_CLAMP[0]))


def test_a_cap_below_the_floor_caps_every_pixel():
    """At cfg > MAX_GUIDANCE / RATE_CLAMP[0] the reference clamps to the floor, then caps below it."""
    uncond, cond = torch.zeros(1, 4, 6, 6), torch.rand(1, 4, 6, 6) + 1
    regions = torch.zeros(1, 3, 3, 3, dtype=torch.bool)
    regions[0, 1, :2] = True
    cfg = 2 * mf.MAX_GUIDANCE / mf.RATE_CLAMP[0]
    rate = mf.semantic_cfg_rate(uncond, cond, regions, torch.ones(1, 3, 3, dtype=torch.bool), cfg=cfg)
    torch.testing.assert_close(rate, torch.full((1, 1, 6, 6), mf.MAX_GUIDANCE / cfg))


def test_semantic_cfg_formula():
    uncond, cond, rate = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5), torch.rand(1, 1, 5, 5)
    torch.testing.assert_close(mf.semantic_cfg(uncond, cond, rate, 7.5), uncond + 7.5 * rate * (cond - uncond))
    ones = torch.ones(1, 1, 5, 5)
    torch.testing.assert_close(mf.semantic_cfg(uncond, cond, ones, 7.5), uncond + 7.5 * (cond - uncond))


def test_half_precision_eps_gives_finite_rate_in_that_dtype():
    uncond, cond = torch.randn(1, 4, 8, 8).half(), torch.randn(1, 4, 8, 8).half()
    regions = torch.zeros(1, 3, 4, 4, dtype=torch.bool)  # no token region at all
    rate = mf.semantic_cfg_rate(uncond, cond, regions, torch.zeros(1, 4, 4, dtype=torch.bool), cfg=7.5)
    assert rate.dtype == torch.float16 and torch.isfinite(rate).all()
    torch.testing.assert_close(rate.float(), torch.full((1, 1, 8, 8), 0.8), atol=1e-3, rtol=0)
