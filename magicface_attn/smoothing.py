"""The 3x3 Gaussian blur the reference applies to segmentation maps and to the CFG-rate map."""
import torch
import torch.nn.functional as F

from .constants import GAUSSIAN_KERNEL_SIZE, GAUSSIAN_SIGMA
from .device_constants import cached_constant


def gaussian_kernel(size: int = GAUSSIAN_KERNEL_SIZE, sigma: float = GAUSSIAN_SIGMA, device=None) -> torch.Tensor:
    """(size, size) float32 kernel summing to 1, built on device (default CPU) by device ops:
    copying a host-built kernel would synchronise a GPU stream at every call. Note the
    reference's exponent -((x - mu) / (2 sigma))^2 (not the textbook /(2 sigma^2)): per-axis
    ~[0.212, 0.576, 0.212]."""
    half = (size - 1) / 2
    # linspace with step 1 gives the exact offsets -half..half.
    offsets = torch.linspace(-half, half, size, dtype=torch.float64, device=device)
    axis = torch.exp(-((offsets / (2 * sigma)) ** 2))
    axis = axis / axis.sum()  # the 2-D kernel is the outer product, so it sums to 1 too
    return (axis[:, None] * axis[None, :]).to(torch.float32)


def gaussian_blur(grid: torch.Tensor, constants=None) -> torch.Tensor:
    """Blur each (H, W) map of grid (B, C, H, W) with reflect padding; H, W >= 2. Float32 out.
    constants: see device_constants (holds the kernel)."""
    channels = grid.shape[1]
    pad = GAUSSIAN_KERNEL_SIZE // 2
    device = grid.device
    kernel = cached_constant(constants, ("gaussian kernel", device), lambda: gaussian_kernel(device=device))
    kernel = kernel.expand(channels, 1, -1, -1)
    padded = F.pad(grid.to(torch.float32), (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, kernel, groups=channels)
