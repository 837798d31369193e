"""Attention propagation and segmentation: fast == materialised, shapes, concept rules."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import magicface_attn as mf

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=20)


@PROPERTY
@given(
    st.integers(1, 2), st.sampled_from([(1, 8), (2, 5), (3, 16)]), st.integers(2, 9), st.integers(2, 9),
    st.sampled_from([1, 7, 77]), st.integers(0, 999),
)
def test_propagate_cross_maps_fast_matches_materialised(batch, head_shape, h, w, tokens, seed):
    heads, dim = head_shape
    gen = torch.Generator().manual_seed(seed)
    q, k, q_cross = (torch.randn(batch, h * w, heads * dim, generator=gen) for _ in range(3))
    text = torch.randn(batch, tokens, heads * dim, generator=gen)
    constants = {}
    fast = mf.propagate_cross_maps(q, k, q_cross, text, heads, impl="fast", constants=constants)
    plain = mf.propagate_cross_maps(q, k, q_cross, text, heads, impl="plain")
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-5)
    # The plain form is the definition: smoothed self-attention times head-mean cross-attention.
    q_h, k_h = (x.view(batch, h * w, heads, dim).transpose(1, 2) for x in (q, k))
    self_probs = (q_h @ k_h.transpose(-1, -2) * dim ** -0.5).softmax(-1).mean(1)
    expected = mf.propagate_with_probs(self_probs, mf.head_mean_cross_probs(q_cross, text, heads))
    torch.testing.assert_close(plain, expected, atol=1e-6, rtol=1e-5)
    again = mf.propagate_cross_maps(q, k, q_cross, text, heads, impl="fast", constants=constants)
    assert len(constants) == 1 and torch.equal(again, fast)  # the identity values are made once


def test_propagation_is_a_plus_three_a_squared_over_four():
    probs = torch.rand(2, 10, 10).softmax(dim=-1)
    cross = torch.rand(2, 10, 5)
    expected = ((probs + 3 * probs @ probs) / 4) @ cross
    torch.testing.assert_close(mf.propagate_with_probs(probs, cross), expected)


def test_head_mean_cross_probs():
    q, k = torch.randn(2, 12, 6), torch.randn(2, 7, 6)
    probs = mf.head_mean_cross_probs(q, k, heads=3)
    per_head = torch.einsum("bnhd,bthd->bhnt", q.view(2, 12, 3, 2), k.view(2, 7, 3, 2)) * 2 ** -0.5
    torch.testing.assert_close(probs, per_head.softmax(-1).mean(1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 12))


def block_maps(h, w, tokens, winners, rows=2, background_start=4.0):
    """(rows, h*w, T) maps where token winners[y][x] dominates pixel (y, x); on the uncond row the
    start token dominates where winners is 0."""
    maps = torch.full((rows, h, w, tokens), 0.01)
    for y in range(h):
        for x in range(w):
            maps[-1, y, x, winners[y][x]] = 1.0
            if rows == 2:
                maps[0, y, x, 0] = background_start if winners[y][x] == 0 else 0.0
                maps[0, y, x, 1] = 0.01 if winners[y][x] == 0 else 1.0
    return maps.reshape(rows, h * w, tokens)


@pytest.mark.parametrize("rows", [1, 2])
def test_non_square_shapes_with_several_layer_resolutions(rows):
    tokens = 9
    layers = [(torch.rand(rows, h * w, tokens).softmax(-1), (h, w)) for h, w in [(6, 8), (3, 4), (12, 16)]]
    seg = mf.segment(layers, (12, 16), [[2], [5, 6]], ca_scale=0.5)
    assert seg.token_scores.shape == (tokens, 12, 16) and seg.token_regions.shape == (tokens, 12, 16)
    assert seg.fore.shape == (12, 16) and seg.labels.shape == (12, 16)
    assert seg.concept_regions.shape == (2, 12, 16)
    assert (seg.fore_scores is None) == (rows == 1)
    if rows == 1:
        assert seg.fore.all()
    assert seg.token_regions.any(dim=0).logical_or(~seg.fore).all()


@pytest.mark.parametrize("rows", [1, 2])
def test_layers_given_stacked_per_grid_segment_as_given_one_by_one(rows):
    """The glue hands segment each grid's layers as one (L, rows, N, T) tensor."""
    gen = torch.Generator().manual_seed(11)
    grids = [((4, 6), 3), ((8, 12), 2), ((4, 6), 1)]
    stacked = [(torch.rand(count, rows, h * w, 9, generator=gen).softmax(-1), (h, w)) for (h, w), count in grids]
    one_by_one = [(layer, hw) for maps, hw in stacked for layer in maps]
    together, alone = (mf.segment(layers, (8, 12), [[2], [5, 6]], ca_scale=0.5) for layers in (stacked, one_by_one))
    for name in ("token_scores", "token_regions", "fore", "concept_regions", "labels"):
        torch.testing.assert_close(getattr(together, name), getattr(alone, name), rtol=1e-6, atol=1e-6)


def test_multi_token_concept_wins_where_its_best_token_wins():
    winners = [[0, 3, 4, 5], [0, 4, 4, 5]]
    layers = [(block_maps(2, 4, 7, winners), (2, 4))]
    seg = mf.segment(layers, (2, 4), [[3, 4], [5]], ca_scale=0.9)
    expected = torch.tensor([[-1, 0, 0, 1], [-1, 0, 0, 1]])
    assert torch.equal(seg.labels, expected)
    assert torch.equal(seg.concept_regions[0], expected == 0)


def test_later_concept_overwrites_shared_pixels():
    layers = [(block_maps(2, 2, 5, [[2, 2], [3, 0]]), (2, 2))]
    seg = mf.segment(layers, (2, 2), [[2], [2, 3]], ca_scale=0.9)
    assert seg.labels.tolist() == [[1, 1], [1, -1]]
    assert not (seg.concept_regions[0] & seg.concept_regions[1]).any()


def test_ca_scale_foreground_rule_is_a_strict_python_float_test():
    # token 4 wins pixel (0, 0), which the start token marks as background
    winners = [[4, 4], [4, 0]]
    maps = block_maps(2, 2, 6, winners)
    maps[0, 0, 0], maps[0, 0, 1] = 9.0, 0.01
    layers = [(maps, (2, 2))]
    at_09 = mf.segment(layers, (2, 2), [[4]], ca_scale=0.9)
    below = mf.segment(layers, (2, 2), [[4]], ca_scale=float(np.float32(0.9)))
    assert not at_09.fore[0, 0] and at_09.token_regions[4, 0, 0]
    assert not below.token_regions[4, 0, 0] and below.token_regions[4, 0, 1]


def test_non_concept_tokens_are_scaled():
    layers = [(block_maps(2, 2, 5, [[1, 2], [2, 0]]), (2, 2))]
    full = mf.segment(layers, (2, 2), [[2]], ca_scale=1.0)
    half = mf.segment(layers, (2, 2), [[2]], ca_scale=0.5)
    torch.testing.assert_close(half.token_scores[2], full.token_scores[2])
    torch.testing.assert_close(half.token_scores[1], full.token_scores[1] * 0.5)


def test_tokens_beyond_num_tokens_used_never_win():
    layers = [(block_maps(2, 2, 6, [[5, 5], [2, 2]]), (2, 2))]
    seg = mf.segment(layers, (2, 2), [[2]], ca_scale=0.9, num_tokens_used=5)
    assert not seg.token_regions[5].any()
    assert seg.token_regions[:5].any(dim=0).all()


def test_segment_validates_arguments():
    layers = [(torch.rand(2, 4, 5), (2, 2))]
    with pytest.raises(ValueError):
        mf.segment(layers, (2, 2), [[7]], ca_scale=0.9)
    with pytest.raises(ValueError):
        mf.segment([(torch.rand(2, 5, 5), (2, 2))], (2, 2), [[1]], ca_scale=0.9)
    with pytest.raises(ValueError):
        mf.segment(layers + [(torch.rand(1, 4, 5), (2, 2))], (2, 2), [[1]], ca_scale=0.9)
