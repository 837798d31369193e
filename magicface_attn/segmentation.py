"""Per-step segmentation of the target into token / concept regions (reference `get_mask`).

Generalised from the reference: any set of layer resolutions, non-square output grids, prompts
of any token count, and concepts that own several tokens.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .constants import CA_SCALE_FOREGROUND_THRESHOLD, NORM_EPS, START_TOKEN
from .device_constants import cached_constant
from .smoothing import gaussian_blur


@dataclass(frozen=True)
class Segmentation:
    """Segmentation of one target image on an (H, W) grid.

    token_scores: (T, H, W) float32 layer-averaged normalised token maps of the cond row, with
        non-concept tokens multiplied by ca_scale (the reference's `new_ca`).
    token_regions: (T, H, W) bool, pixels where the token has the top score (ties: all tied
        tokens), ANDed with `fore` when ca_scale < 0.9 (the reference's `ca_mask`).
    fore_scores: (2, H, W) float32 [start token, sum of the other tokens] of the uncond row, or
        None without an uncond row.
    fore: (H, W) bool foreground: the start token does not win (all True without uncond row).
    concept_regions: (R, H, W) bool, disjoint: where several concepts claim a pixel the later one
        keeps it (the reference's RBA overwrite order).
    labels: (H, W) long, concept index per pixel, -1 for background / no concept.
    """

    token_scores: torch.Tensor
    token_regions: torch.Tensor
    fore_scores: torch.Tensor | None
    fore: torch.Tensor
    concept_regions: torch.Tensor
    labels: torch.Tensor


def _resized(maps: torch.Tensor, hw, out_hw) -> torch.Tensor:
    """(L, rows, h*w, T) propagated maps of L layers on one grid -> (L*rows, T, H, W) float32,
    resized bilinearly (the reference's upsampling to 32x32)."""
    layers, rows, tokens_hw, tokens = maps.shape
    h, w = hw
    if tokens_hw != h * w:
        raise ValueError(f"maps have {tokens_hw} positions, layer grid {h}x{w} has {h * w}")
    grid = maps.to(torch.float32).transpose(-1, -2).reshape(layers * rows, tokens, h, w)
    if (h, w) != tuple(out_hw):
        grid = F.interpolate(grid, size=tuple(out_hw), mode="bilinear", align_corners=False)
    return grid


def _grid_groups(layer_blocks):
    """[((L, rows, h*w, T) maps, (h, w))] -> {(h, w): maps of all its layers} in first-seen order;
    layers sharing a grid are processed together (a few ops per grid instead of per layer: SDXL
    has up to 70 segmentation layers)."""
    groups = {}
    for maps, hw in layer_blocks:
        groups.setdefault(tuple(hw), []).append(maps)
    return {hw: blocks[0] if len(blocks) == 1 else torch.cat(blocks) for hw, blocks in groups.items()}


def _token_factors(tokens: int, ca_scale: float, concept_set, device) -> torch.Tensor:
    """(T, 1, 1): ca_scale, 1.0 at the concept tokens. Filled in place through Python-int views:
    list or boolean indexing would copy an index to the device or synchronise with it."""
    factors = torch.full((tokens, 1, 1), float(ca_scale), device=device)
    for token in concept_set:
        factors[token].fill_(1.0)  # x * 1.0 == x exactly
    return factors


def _layer_sums(layer_blocks, out_hw, rows: int, used, constants=None):
    """Sums over all layers of the mean-normalised cond token maps (T, H, W) and, with an
    uncond row, of the normalised [start token, other tokens] maps (2, H, W) (else None).

    Every grid's layers are resized to out_hw, then blurred and normalised together: a few
    kernels per step instead of per grid (launches, not arithmetic, are the cost here)."""
    resized = [_resized(maps, hw, out_hw) for hw, maps in _grid_groups(layer_blocks).items()]
    grid = resized[0] if len(resized) == 1 else torch.cat(resized)
    grid = gaussian_blur(grid, constants).unflatten(0, (-1, rows))
    cond = grid[:, -1]
    token_sum = (cond / (cond.mean(dim=(-2, -1), keepdim=True) + NORM_EPS)).sum(dim=0)
    if rows != 2:
        return token_sum, None
    uncond = grid[:, 0]
    stop = uncond.shape[1] if used is None else used
    fore = torch.stack([uncond[:, START_TOKEN], uncond[:, START_TOKEN + 1 : stop].sum(dim=1)], dim=1)
    # No epsilon here, as the reference; the clamp only guards all-zero maps.
    fore = fore / fore.mean(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return token_sum, fore.sum(dim=0)


def segment(layer_maps, out_hw, concept_tokens, ca_scale: float, num_tokens_used: int | None = None,
            constants=None) -> Segmentation:
    """Segment the target from propagated attention maps of several layers.

    layer_maps: list of (maps, (h, w)); maps (2, h*w, T) with row 0 = uncond target and row
        1 = cond target, or (1, h*w, T) = cond target only (no uncond branch: everything is
        foreground); or (L, rows, h*w, T), L layers on one grid at once. Maps are
        propagate_cross_maps outputs.
    out_hw: (H, W) output grid; the reference uses half the latent size (32x32 at 64x64).
    concept_tokens: per concept, its token positions (a multi-token word or phrase). All of
        them are exempt from ca_scale; the concept wins a pixel when any of its tokens has the
        top score there, i.e. when its best token wins.
    ca_scale: multiplier of non-concept token scores; below 0.9 (strict Python-float test) token
        regions are restricted to the foreground.
    num_tokens_used: tokens [0, num_tokens_used) take part in the argmax and the foreground sum
        (e.g. to ignore padding); None = all T tokens, as the reference.
    constants: see device_constants (a per-run cache of the blur kernel, token factors, indices).
    Never synchronises with the device.
    """
    layer_blocks, rows = _layer_blocks(layer_maps)
    token_sum, fore_sum = _layer_sums(layer_blocks, out_hw, rows, num_tokens_used, constants)
    count = sum(maps.shape[0] for maps, _ in layer_blocks)
    token_scores = token_sum / count
    tokens = token_scores.shape[0]
    used = tokens if num_tokens_used is None else num_tokens_used
    concept_set = _checked_concept_tokens(concept_tokens, tokens, used, num_tokens_used)
    device = token_scores.device
    factors = cached_constant(constants, ("token factors", tokens, float(ca_scale), tuple(concept_set), device),
                              lambda: _token_factors(tokens, ca_scale, concept_set, device))
    token_scores = token_scores * factors

    top = token_scores[:used].max(dim=0).values
    token_regions = token_scores == top
    if used < tokens:
        token_regions[used:].fill_(False)
    fore_scores, fore = _foreground(fore_sum, count, top)
    if float(ca_scale) < CA_SCALE_FOREGROUND_THRESHOLD:
        token_regions &= fore
    labels, concept_regions = _concept_labels(token_regions, concept_tokens, top, constants)
    return Segmentation(token_scores, token_regions, fore_scores, fore, concept_regions, labels)


def _layer_blocks(layer_maps):
    """([(maps (L, rows, h*w, T), hw)], rows) of segment's layer_maps, checked."""
    if not layer_maps:
        raise ValueError("segment needs at least one layer")
    rows = layer_maps[0][0].shape[-3]
    if rows not in (1, 2) or any(maps.dim() not in (3, 4) or maps.shape[-3] != rows for maps, _ in layer_maps):
        raise ValueError("every layer needs the same 1 (cond) or 2 (uncond, cond) rows")
    return [(maps if maps.dim() == 4 else maps[None], hw) for maps, hw in layer_maps], rows


def _checked_concept_tokens(concept_tokens, tokens: int, used: int, num_tokens_used) -> list:
    """The sorted set of every concept token, after checking them and num_tokens_used."""
    if not 0 < used <= tokens:
        raise ValueError(f"num_tokens_used must be in 1..{tokens}, got {num_tokens_used}")
    concept_set = sorted({t for group in concept_tokens for t in group})
    if any(not 0 <= t < used for t in concept_set):
        raise ValueError(f"concept tokens {concept_set} outside 0..{used - 1}")
    return concept_set


def _foreground(fore_sum, count: int, top):
    """(fore_scores (2, H, W) [start token, other tokens] of the uncond row, or None; fore (H, W)
    bool): foreground where the other tokens outscore the start token; without an uncond row
    every pixel is."""
    if fore_sum is None:
        return None, torch.ones_like(top, dtype=torch.bool)
    fore_scores = fore_sum / count
    return fore_scores, fore_scores[0] != fore_scores.max(dim=0).values


def _concept_labels(token_regions, concept_tokens, top, constants):
    """(labels (H, W) long, -1 where no concept wins; concept_regions (R, H, W) bool): a concept
    wins a pixel where any of its tokens has the top score, later concepts over earlier ones."""
    labels = torch.full(top.shape, -1, dtype=torch.long, device=top.device)
    for index, group in enumerate(concept_tokens):
        won = token_regions[group[0]]
        if len(group) > 1:
            won = torch.stack([token_regions[token] for token in group]).any(dim=0)
        labels = torch.where(won, index, labels)
    device = top.device
    concept_indices = cached_constant(constants, ("concept indices", len(concept_tokens), device),
                                      lambda: torch.arange(len(concept_tokens), device=device)[:, None, None])
    return labels, labels[None] == concept_indices
