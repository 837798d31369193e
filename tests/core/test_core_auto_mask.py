"""word_mask: a reference's word region from its own propagated attention maps."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import magicface_attn as mf

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=20)
H = W = 8


def _halves(word_side: str):
    """One layer's maps (1, H*W, 4) of tokens [start, 'a', word, end]: the word's attention lies
    on one half of the picture, the start token's on the other."""
    left = torch.zeros(H, W)
    left[:, : W // 2] = 1.0
    word = left if word_side == "left" else 1 - left
    maps = torch.full((H, W, 4), 0.05)
    maps[..., 0] = 0.1 + 0.8 * (1 - word)
    maps[..., 2] = 0.1 + 0.8 * word
    return maps.reshape(1, H * W, 4), word.bool()


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_mask_is_the_half_the_word_attends(side):
    maps, expected = _halves(side)
    estimate = mf.word_mask([(maps, (H, W))], (H, W), [2])
    assert torch.equal(estimate.mask, expected)
    assert (estimate.share[expected] > 0.5).all() and (estimate.share[~expected] < 0.5).all()


def test_tokens_other_than_the_word_and_the_start_token_do_not_compete():
    maps, expected = _halves("left")
    maps[..., 3] = 5.0  # an end token attended everywhere would win every pixel of a full argmax
    assert torch.equal(mf.word_mask([(maps, (H, W))], (H, W), [2]).mask, expected)


@PROPERTY
@given(st.integers(0, 999), st.integers(1, 3), st.sampled_from([(4, 4), (8, 6)]))
def test_at_one_half_it_is_the_segmentations_argmax(seed, word_tokens, hw):
    gen = torch.Generator().manual_seed(seed)
    tokens = list(range(1, 1 + word_tokens))
    layers = [(torch.rand(1, hw[0] * hw[1], 6, generator=gen), hw),
              (torch.rand(1, (hw[0] // 2) * (hw[1] // 2), 6, generator=gen), (hw[0] // 2, hw[1] // 2))]
    estimate = mf.word_mask(layers, hw, tokens)
    kept = [(maps[..., [0, *tokens]], grid) for maps, grid in layers]
    labels = mf.segment(kept, hw, [list(range(1, 1 + word_tokens))], ca_scale=1.0).labels
    assert torch.equal(estimate.mask, labels == 0)


@PROPERTY
@given(st.integers(0, 999))
def test_a_higher_threshold_gives_a_smaller_mask(seed):
    maps = torch.rand(1, 64, 5, generator=torch.Generator().manual_seed(seed))
    masks = [mf.word_mask([(maps, (8, 8))], (8, 8), [2], threshold).mask for threshold in (0.3, 0.5, 0.7)]
    assert (masks[1] <= masks[0]).all() and (masks[2] <= masks[1]).all()


@pytest.mark.parametrize("tokens, threshold", [([], 0.5), ([2], 0.0), ([2], 1.0)])
def test_bad_arguments_are_refused(tokens, threshold):
    with pytest.raises(ValueError):
        mf.word_mask([(torch.rand(1, 16, 4), (4, 4))], (4, 4), tokens, threshold)
