"""Semantic-aware classifier-free guidance (the reference pipeline's `use_rate` branch).

Per token region k: rate_k = mean |eps_c - eps_u| over the foreground / mean over region k.
Each pixel gets the sum of the rates of the token regions holding it (0 outside every region),
clamped to RATE_CLAMP, capped at MAX_GUIDANCE / cfg and Gaussian-blurred.
"""
import torch

from .constants import MAX_GUIDANCE, RATE_CLAMP, RATE_EPS
from .masks import resize_nearest
from .smoothing import gaussian_blur


def semantic_cfg_rate(uncond, cond, token_regions, fore, cfg: float, constants=None) -> torch.Tensor:
    """Per-pixel guidance multiplier.

    uncond, cond: (B, C, H', W') eps predictions of the target rows; token_regions: (B, T, H, W)
    bool (Segmentation.token_regions, stacked); fore: (B, H, W) bool. Regions are resized to the
    latent grid by nearest (the reference's 2x upsample). Returns (B, 1, H', W') in uncond's
    dtype; computed in float32. References' rows are not included: their rate is 1.
    constants: see device_constants (a per-run cache of the blur kernel and resize indices).
    """
    height, width = uncond.shape[-2:]
    # Token regions and the foreground go through each step together: (B, T + 1, H', W').
    regions = torch.cat([token_regions, fore[:, None]], dim=1).to(torch.float32)
    regions = resize_nearest(regions, height, width, constants)
    delta = cond.to(torch.float32) - uncond.to(torch.float32)
    norm = delta.norm(dim=1, keepdim=True)
    areas = regions.sum(dim=(2, 3))
    means = (norm * regions).sum(dim=(2, 3)) / (areas + RATE_EPS)  # guarded mean norm per region
    region_norms, fore_norms = means[:, :-1], means[:, -1:]
    rates = fore_norms * (areas[:, :-1] > 0) / (region_norms + RATE_EPS)
    rate = (rates[:, :, None, None] * regions[:, :-1]).sum(dim=1, keepdim=True)
    # clamp(low, min(high, cap)) equals clamping to RATE_CLAMP, then capping at cap, also when
    # the cap lies below the floor (torch.clamp then returns its max everywhere).
    high = min(RATE_CLAMP[1], MAX_GUIDANCE / cfg) if cfg > 0 else RATE_CLAMP[1]
    rate = rate.clamp(min=RATE_CLAMP[0], max=high)
    return gaussian_blur(rate, constants).to(uncond.dtype)


def semantic_cfg(uncond, cond, rate, cfg: float) -> torch.Tensor:
    """uncond + cfg * rate * (cond - uncond); rate (B, 1, H', W') broadcasts over channels."""
    return torch.addcmul(uncond, rate, cond - uncond, value=cfg)  # two kernels instead of four
