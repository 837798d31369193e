"""Where a concept's word is in its own reference image: the segmentation of segmentation.py
applied to a reference row under the reference's own prompt ("a man", "a hat").

The word competes with the start-of-text token only. Like the target's foreground rule
(segmentation.py: the start token wins the background on the uncond row), the start token
collects the attention of pixels that no word of the prompt describes; the other words of a
reference prompt ("a", the end-of-text tokens that summarise the whole sentence) would take
pixels of the concept itself.
"""
from dataclasses import dataclass

import torch

from .constants import START_TOKEN
from .segmentation import Segmentation, segment


@dataclass(frozen=True)
class WordMask:
    """One reference's estimate on an (H, W) grid.

    mask: (H, W) bool, where the word's share reaches the threshold.
    share: (H, W) float32 in [0, 1], word score / (word score + start-token score); the word's
        score is its best token's.
    segmentation: the Segmentation over [start token, word tokens...] it was read from.
    """
    mask: torch.Tensor
    share: torch.Tensor
    segmentation: Segmentation


def word_and_start_maps(layer_maps, word_tokens):
    """Keep the start token's map and the word's, in that order, of every layer.

    layer_maps: list of (maps, (h, w)), maps (..., 1, h*w, T) of one cond row (propagate_cross_maps
    output); word_tokens: the word's token positions in the reference prompt's context.
    """
    index = [START_TOKEN, *word_tokens]
    return [(maps[..., index], hw) for maps, hw in layer_maps]


def word_mask(layer_maps, out_hw, word_tokens, threshold: float = 0.5, constants=None) -> WordMask:
    """The word's region of one reference on the out_hw grid.

    At threshold 0.5 the mask is exactly where segment() labels the word (argmax against the
    start token, ties to the word); a higher threshold keeps only where the word dominates.
    """
    if not word_tokens:
        raise ValueError("word_mask needs the word's token positions")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    seg = segment(word_and_start_maps(layer_maps, word_tokens), out_hw,
                  [list(range(1, 1 + len(word_tokens)))], ca_scale=1.0, constants=constants)
    word = seg.token_scores[1:].max(dim=0).values
    start = seg.token_scores[0]
    # Multiplied out, not divided: at 0.5 both sides scale by exactly 0.5, matching the argmax.
    mask = word * (1.0 - threshold) >= start * threshold
    share = word / (word + start).clamp_min(torch.finfo(torch.float32).tiny)
    return WordMask(mask=mask, share=share.clamp(0, 1), segmentation=seg)
