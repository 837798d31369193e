"""Concept masks: the reference code's loading rule and resizing to attention-layer grids."""
import torch
import torch.nn.functional as F

from .constants import REFERENCE_MASK_ON_VALUE, REFERENCE_MASK_SIZE
from .device_constants import cached_constant

# How a mask is brought to a layer grid (mask_to_layer); the Stage Scheduler's mask_mode picks one.
RESIZE_NEAREST, RESIZE_AREA = "nearest", "area"
LAYER_RESIZE_MODES = (RESIZE_NEAREST, RESIZE_AREA)


def nearest_indices(source: int, target: int, device=None) -> torch.Tensor:
    """Source index floor(i * source / target) for each target index i (integer arithmetic, so
    it never drifts from the formula the reference's power-of-two resizes follow)."""
    return torch.arange(target, device=device) * source // target


def resize_nearest(grid: torch.Tensor, height: int, width: int, constants=None) -> torch.Tensor:
    """Nearest resize of the last two axes (..., Hs, Ws) -> (..., height, width); constants: see
    device_constants (holds the index tensors)."""
    device = grid.device
    rows = cached_constant(constants, ("nearest", grid.shape[-2], height, device),
                           lambda: nearest_indices(grid.shape[-2], height, device))
    cols = cached_constant(constants, ("nearest", grid.shape[-1], width, device),
                           lambda: nearest_indices(grid.shape[-1], width, device))
    return grid[..., rows[:, None], cols]


def reference_mode_mask(mask_uint8: torch.Tensor) -> torch.Tensor:
    """(H0, W0) 8-bit mask (values 0..255, any dtype) -> (128, 128) bool, as the reference loads
    masks: nearest resize to 128x128 (aspect ratio squashed), then `(m / 255).to(uint8)`, which
    keeps only pixels equal to 255 (anti-aliased JPEG edges at 254 and below are dropped)."""
    if mask_uint8.dim() != 2:
        raise ValueError(f"expected an (H0, W0) mask, got shape {tuple(mask_uint8.shape)}")
    resized = resize_nearest(mask_uint8, REFERENCE_MASK_SIZE, REFERENCE_MASK_SIZE)
    return resized.to(torch.float32) >= REFERENCE_MASK_ON_VALUE


def mask_to_layer(masks: torch.Tensor, h: int, w: int, mode: str = RESIZE_NEAREST, threshold: float = 0.5) -> torch.Tensor:
    """(R, Hm, Wm) float/bool masks -> (R, h*w) bool, row-major (y*w + x).

    "nearest": the reference rule, pixel (y, x) samples source (floor(y*Hm/h), floor(x*Wm/w));
        float values count when >= threshold (a {0,1} mask is unaffected by the threshold).
    "area": each layer cell averages the source pixels it covers (adaptive average pooling) and
        counts when the covered fraction is >= threshold. Better for soft or thin masks, whose
        nearest samples can miss the concept entirely at 32x32; not the reference behaviour.
    """
    if mode not in LAYER_RESIZE_MODES:
        raise ValueError(f"mode must be one of {LAYER_RESIZE_MODES}, got {mode!r}")
    if masks.dim() != 3:
        raise ValueError(f"expected (R, Hm, Wm) masks, got shape {tuple(masks.shape)}")
    values = masks.to(torch.float32)
    if mode == RESIZE_NEAREST:
        layer = resize_nearest(values, h, w)
    else:
        layer = F.adaptive_avg_pool2d(values[:, None], (h, w))[:, 0]
    return (layer >= threshold).reshape(masks.shape[0], h * w)


def grow_mask(mask, pixels: int):
    """Dilate (pixels > 0) or erode (pixels < 0) a (B, H, W) binary float mask by max pooling."""
    if pixels == 0:
        return mask
    size = 2 * abs(pixels) + 1
    if pixels > 0:
        return F.max_pool2d(mask[:, None], size, stride=1, padding=abs(pixels))[:, 0]
    return 1 - F.max_pool2d(1 - mask[:, None], size, stride=1, padding=abs(pixels))[:, 0]


def feather_mask(mask, radius: float):
    """Gaussian blur of a (B, H, W) float mask's edges, radius in pixels (edges replicated)."""
    if radius <= 0:
        return mask
    sigma = radius / 2
    half = int(radius * 1.5) + 1
    x = torch.arange(-half, half + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(mask[:, None], (half, half, half, half), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))[:, 0]
