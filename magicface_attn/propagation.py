"""Head-averaged attention probabilities and the smoothed propagation of cross-attention maps.

The reference smooths the target's head-mean self-attention A (N x N) as A_s = (A + 3 A.A) / 4
and propagates the head-mean cross-attention maps C (N x T) through it: A_s . C.
"""
import torch
import torch.nn.functional as F

from .attention import IMPLS
from .device_constants import cached_constant
from .heads_layout import compute_dtype, padded_width, split_heads


def head_mean_cross_probs(q, k_text, heads: int) -> torch.Tensor:
    """Cross-attention probabilities averaged over heads, float32 (the definition, materialised).

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


def _head_mean_attention(q_p, k_p, values, dim: int, dtype) -> torch.Tensor:
    """mean_h softmax(q_h k_h^T / sqrt(dim)) @ values without materialising the attention.

    q_p, k_p: (B, H, N or T, width) zero-padded from head dim `dim`; values: (B, Nk, width),
    the same for every head. Returns (B, N, width) in dtype; zero value columns stay zero
    (zero columns change neither the logits nor the other output columns).
    """
    batch, heads, _, width = q_p.shape
    values = values.to(q_p.dtype)[:, None].expand(batch, heads, -1, width)
    out = F.scaled_dot_product_attention(q_p, k_p, values, scale=dim ** -0.5)
    return out.mean(dim=1, dtype=dtype)


def _padded_heads(x, heads: int, dtype, width: int):
    x_h = split_heads(x, heads, dtype)
    return x_h if x_h.shape[-1] == width else F.pad(x_h, (0, width - x_h.shape[-1]))


def propagate_cross_maps(q_self, k_self, q_cross, k_text, heads: int, impl: str = "auto",
                         constants=None) -> torch.Tensor:
    """A_s . C of one or more layers stacked along the batch: C = head_mean_cross_probs(q_cross,
    k_text), A = head-mean softmax(q k^T * d^-0.5) of the target's plain self-attention.

    q_self, k_self, q_cross: (B, N, C); k_text: (B, T, C). Returns (B, N, T) float32.
    Fast path: three fused attentions, never an N x N or per-head N x T map in memory:
    C/4 = mean_h softmax(q_cross k_text^T) @ (I_T / 4) (identity values give the probabilities),
    U = A.(C/4), then A_s.C = U + 3 A.U. Every width is padded once to w >= max(d, T)
    (fused kernels need equal head dims; the identity's padded columns keep the maps' zero).
    "plain" materialises both maps (oracle for tests). No host synchronisation; constants: a
    dict the caller keeps for the run (device_constants), holding the identity values.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    dtype = compute_dtype(q_self)
    if impl == "plain":
        q_h, k_h = split_heads(q_self, heads, torch.float32), split_heads(k_self, heads, torch.float32)
        logits = torch.einsum("bhnd,bhmd->bhnm", q_h, k_h) * q_h.shape[-1] ** -0.5
        return propagate_with_probs(logits.softmax(dim=-1).mean(dim=1), head_mean_cross_probs(q_cross, k_text, heads))
    dim, tokens = q_self.shape[-1] // heads, k_text.shape[1]
    width = padded_width(max(dim, tokens))
    quarter_identity = cached_constant(
        constants, ("quarter identity", tokens, width, dtype, q_self.device),
        lambda: F.pad(torch.eye(tokens, dtype=dtype, device=q_self.device) / 4, (0, width - tokens)))
    q_c, k_t, q_s, k_s = (_padded_heads(x, heads, dtype, width) for x in (q_cross, k_text, q_self, k_self))
    cross_quarter = _head_mean_attention(q_c, k_t, quarter_identity.expand(q_c.shape[0], -1, -1), dim, dtype)
    once = _head_mean_attention(q_s, k_s, cross_quarter, dim, dtype)
    twice = _head_mean_attention(q_s, k_s, once, dim, torch.float32)
    return torch.add(once, twice, alpha=3)[..., :tokens]  # float32, as twice is
