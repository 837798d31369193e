"""Head-averaged attention probabilities and the smoothed propagation of cross-attention maps.

The reference smooths the target's head-mean self-attention A (N x N) as A_s = (A + 3 A.A) / 4
and propagates the cross-attention maps C (N x T) through it: A_s . C.
"""
import torch
import torch.nn.functional as F

from .attention import IMPLS
from .heads_layout import compute_dtype, padded_width, split_heads


def head_mean_cross_probs(q, k_text, heads: int) -> torch.Tensor:
    """Cross-attention probabilities averaged over heads, float32.

    q: (B, N, C) image queries; k_text: (B, T, C) text keys. Returns (B, N, T):
    mean_h softmax(q_h k_h^T * d^-0.5).
    """
    q_h = split_heads(q, heads, torch.float32)
    k_h = split_heads(k_text, heads, torch.float32)
    scale = q_h.shape[-1] ** -0.5
    return (torch.einsum("bhnd,bhtd->bhnt", q_h, k_h) * scale).softmax(dim=-1).mean(dim=1)


def propagate_with_probs(self_probs: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Reference-order propagation with materialised maps (float32).

    self_probs: (B, N, N) head-mean self-attention; cross: (B, N, T). Returns (B, N, T) =
    ((A + A.A + A.A + A.A) / 4) . C, summed in the reference's order.
    """
    probs = self_probs.to(torch.float32)
    squared = probs @ probs
    smoothed = probs + squared
    smoothed += squared
    smoothed += squared
    smoothed /= 4
    return smoothed @ cross.to(torch.float32)


def _apply_head_mean_attention(q_p, k_p, maps: torch.Tensor, dim: int) -> torch.Tensor:
    """mean_h softmax(q_h k_h^T / sqrt(dim)) @ maps without materialising the N x N attention.

    q_p, k_p: (B, H, N, width) queries/keys zero-padded from head dim `dim`; maps: (B, N, width)
    zero-padded in their last columns. Returns (B, N, width) float32 whose padded columns stay
    zero (zero columns change neither the logits nor the other output columns).
    """
    batch, heads, tokens, width = q_p.shape
    values = maps.to(q_p.dtype)[:, None].expand(batch, heads, tokens, width)
    out = F.scaled_dot_product_attention(q_p, k_p, values, scale=dim ** -0.5)
    return out.mean(dim=1, dtype=torch.float32)


def smooth_propagate(q_self, k_self, cross, heads: int, impl: str = "auto") -> torch.Tensor:
    """A_s . C with A = head-mean softmax(q k^T * d^-0.5) of the target's plain self-attention.

    q_self, k_self: (B, N, C); cross: (B, N, T) (e.g. head_mean_cross_probs). Returns (B, N, T)
    float32. Fast path: (A.C + 3 A.(A.C)) / 4 as two fused attentions with the maps as values,
    q, k and maps padded once to a common width (fused kernels need equal head dims);
    "plain" materialises A (oracle for tests). No host synchronisation.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    dtype = compute_dtype(q_self)
    q_h = split_heads(q_self, heads, dtype)
    k_h = split_heads(k_self, heads, dtype)
    if impl == "plain":
        scale = q_h.shape[-1] ** -0.5
        logits = torch.einsum("bhnd,bhmd->bhnm", q_h.float(), k_h.float()) * scale
        return propagate_with_probs(logits.softmax(dim=-1).mean(dim=1), cross)
    dim, columns = q_h.shape[-1], cross.shape[-1]
    width = padded_width(max(dim, columns))
    q_p, k_p = F.pad(q_h, (0, width - dim)), F.pad(k_h, (0, width - dim))
    once = _apply_head_mean_attention(q_p, k_p, F.pad(cross, (0, width - columns)), dim)
    # The padded columns of `once` are zero already: it feeds the second pass as it is.
    twice = _apply_head_mean_attention(q_p, k_p, once, dim)
    return torch.add(once, twice, alpha=3)[..., :columns] / 4
