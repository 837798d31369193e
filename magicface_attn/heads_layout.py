"""Conversions between ComfyUI's attention layout and per-head tensors.

ComfyUI passes q/k/v as (B, N, C) with C = heads * d, head-major (channel head*d + j).
Per-head tensors are (B, heads, N, d), the layout scaled_dot_product_attention expects.
"""
import torch

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def split_heads(x: torch.Tensor, heads: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d), optionally cast to dtype."""
    batch, tokens, channels = x.shape
    if channels % heads:
        raise ValueError(f"channels {channels} not divisible by heads {heads}")
    x = x.view(batch, tokens, heads, channels // heads).transpose(1, 2)
    return x if dtype is None else x.to(dtype)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads*d)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype to run attention in. Half precision is upcast to float32 on CPU: the CPU half
    kernels were no faster here (N=4096, 2 cores) and native bf16 was less accurate; on GPUs the
    input dtype runs natively."""
    if x.device.type == "cpu" and x.dtype in _HALF_DTYPES:
        return torch.float32
    return x.dtype


def padded_width(width: int) -> int:
    """Smallest multiple of 8 >= width (fused attention kernels want aligned head dims)."""
    return -(-width // 8) * 8
