"""The square frame every reference image and mask is brought into before the VAE.

Layouts: images (H, W, C) float in [0, 1] (masks as (H, W, 1)), CPU.
"""
from dataclasses import dataclass

import torch.nn.functional as F


@dataclass(frozen=True)
class FitWindow:
    """Where a fitted picture lies inside its (size, size) frame, in pixels."""
    top: int
    left: int
    height: int
    width: int


def fit_window(image_hw, size: int) -> FitWindow:
    """The longer side fills the square, the shorter one is centred."""
    height, width = image_hw
    scale = size / max(height, width)
    inner = (max(1, round(height * scale)), max(1, round(width * scale)))
    return FitWindow((size - inner[0]) // 2, (size - inner[1]) // 2, *inner)


def squashed(image_hwc, size):
    """(H, W, C) -> (size, size, C), squashed with nearest-neighbour sampling as the published
    loader does (reference mode)."""
    chw = image_hwc.movedim(-1, 0)[None].float()
    return F.interpolate(chw, size=(size, size), mode="nearest")[0].movedim(0, -1).clamp(0, 1)


def resized(image_hwc, hw):
    """(H, W, C) -> (h, w, C): area filter when shrinking, bilinear when enlarging."""
    chw = image_hwc.movedim(-1, 0)[None].float()
    if chw.shape[-2] > hw[0] or chw.shape[-1] > hw[1]:
        out = F.interpolate(chw, size=hw, mode="area")
    else:
        out = F.interpolate(chw, size=hw, mode="bilinear", align_corners=False)
    return out[0].movedim(0, -1).clamp(0, 1)


def fitted(image_hwc, size, pad_mode):
    """(H, W, C) -> (size, size, C) keeping the aspect (fit_window). Images are padded by
    repeating their edge pixels ("replicate": the UNet's convolutions near the border then see
    the picture's colours, not a flat fill), masks with 0 ("constant"), so the padding's keys
    never reach the target's attention."""
    window = fit_window(image_hwc.shape[:2], size)
    chw = resized(image_hwc, (window.height, window.width)).movedim(-1, 0)[None]
    padded = F.pad(chw, (window.left, size - window.width - window.left,
                         window.top, size - window.height - window.top), mode=pad_mode)
    return padded[0].movedim(0, -1)


def unfitted(frame_hw1, image_hw):
    """Inverse of fitted for a mask: (size, size, 1) frame -> (H, W, 1) over the original
    picture, nearest-neighbour (a binary mask stays binary)."""
    window = fit_window(image_hw, frame_hw1.shape[0])
    inner = frame_hw1[window.top:window.top + window.height, window.left:window.left + window.width]
    chw = inner.movedim(-1, 0)[None].float()
    return F.interpolate(chw, size=tuple(image_hw), mode="nearest")[0].movedim(0, -1)
