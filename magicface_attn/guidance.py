"""Semantic-aware classifier-free guidance (the reference pipeline's `use_rate` branch).

Per token region k: rate_k = mean |eps_c - eps_u| over the foreground / mean over region k.
Each pixel gets the sum of the rates of the token regions holding it (0 outside every region),
clamped to RATE_CLAMP, capped at MAX_GUIDANCE / cfg and Gaussian-blurred.
"""
import torch

from .constants import MAX_GUIDANCE, RATE_CLAMP, RATE_EPS
from .masks import resize_nearest
from .smoothing import gaussian_blur


def _region_mean(norm: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """norm (B, 1, H, W), regions (B, K, H, W) float -> (B, K) guarded mean inside each region."""
    return (norm * regions).sum(dim=(2, 3)) / (regions.sum(dim=(2, 3)) + RATE_EPS)


def semantic_cfg_rate(uncond, cond, token_regions, fore, cfg: float, constants=None) -> torch.Tensor:
    """Per-pixel guidance multiplier.

    uncond, cond: (B, C, H', W') eps predictions of the target rows; token_regions: (B, T, H, W)
    bool (Segmentation.token_regions, stacked); fore: (B, H, W) bool. Regions are resized to the
    latent grid by nearest (the reference's 2x upsample). Returns (B, 1, H', W') in uncond's
    dtype; computed in float32. References' rows are not included: their rate is 1.
    constants: see device_constants (a per-run cache of the blur kernel and resize indices).
    """
    height, width = uncond.shape[-2:]
    # Regions and foreground resized in one gather.
    both = torch.cat([token_regions, fore[:, None]], dim=1).to(torch.float32)
    both = resize_nearest(both, height, width, constants)
    regions, foreground = both[:, :-1], both[:, -1:]
    delta = cond.to(torch.float32) - uncond.to(torch.float32)
    norm = delta.norm(dim=1, keepdim=True)
    region_norms = _region_mean(norm, regions)
    fore_norms = _region_mean(norm, foreground)
    present = (regions.sum(dim=(2, 3)) > 0).float()
    rates = fore_norms * present / (region_norms + RATE_EPS)
    rate = (rates[:, :, None, None] * regions).sum(dim=1, keepdim=True)
    rate = rate.clamp(min=RATE_CLAMP[0], max=RATE_CLAMP[1])
    if cfg > 0:
        rate = rate.clamp_max(MAX_GUIDANCE / cfg)
    return gaussian_blur(rate, constants).to(uncond.dtype)


def semantic_cfg(uncond, cond, rate, cfg: float) -> torch.Tensor:
    """uncond + cfg * rate * (cond - uncond); rate (B, 1, H', W') broadcasts over channels."""
    return uncond + cfg * rate * (cond - uncond)
