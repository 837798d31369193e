"""Reference keys/values of one self-attention layer, prepared once and reused by RSA and RBA.

Bias rule of the reference code: the logit of reference i's key m is q.k*scale + w_i when the
key lies inside concept mask i, and the key is excluded (dtype minimum, i.e. -inf) otherwise.
The reference tests `mask * w_i != 0`, so a weight of exactly 0 removes reference i entirely.
"""
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .heads_layout import padded_width


@dataclass(frozen=True)
class ReferenceKV:
    """Prepared reference keys/values.

    Dense form (materialised oracle path):
        keys, values: (R, M, C), C = heads*d head-major; M = h*w tokens of the layer.
        key_mask: (R, M) bool, True where the key takes part (inside the mask and w_i != 0).
        weights: (R,) float32 logit bias per reference.
    Packed form (fast path): only the K kept keys, reference-major, key order preserved.
        packed_keys, packed_values: (heads, K, d).
        packed_bias: (K,) float32, w_i of the key's reference.
        offsets: R+1 Python ints; reference i owns packed positions offsets[i]:offsets[i+1].
    Folded form (what the fused attention reads): see folded().
    """

    heads: int
    keys: torch.Tensor
    values: torch.Tensor
    key_mask: torch.Tensor
    weights: torch.Tensor
    packed_keys: torch.Tensor
    packed_values: torch.Tensor
    packed_bias: torch.Tensor
    offsets: tuple
    # Caches shared with the PackLayout (bias columns and query tail, reused every step) and of this object
    # (its folded block, reused by every call that reads these references).
    fold_cache: dict = field(default_factory=dict, compare=False, repr=False)
    folded_blocks: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_refs(self) -> int:
        return self.keys.shape[0]

    @property
    def head_dim(self) -> int:
        return self.keys.shape[-1] // self.heads

    @property
    def total_kept(self) -> int:
        return self.offsets[-1]

    def kept_slice(self, index: int) -> slice:
        """Positions of reference `index`'s kept keys in the packed tensors."""
        return slice(self.offsets[index], self.offsets[index + 1])

    def num_kept(self, index: int) -> int:
        return self.offsets[index + 1] - self.offsets[index]

    def dense_bias(self, index: int, dtype: torch.dtype) -> torch.Tensor:
        """(M,) additive logit bias of reference `index` exactly as the reference builds it:
        w_i inside the mask, the dtype's most negative value outside."""
        weight = self.weights[index].to(dtype)
        excluded = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=self.keys.device)
        return torch.where(self.key_mask[index], weight, excluded)

    def folded(self, like: torch.Tensor) -> "FoldedBlock":
        """The packed references folded for the fused attention (FoldedBlock) in like's dtype
        and device, width = head dim + 2 padded to 8. Made once per dtype and device: every
        attention call reading these references (one per step, or several with reused
        references) would otherwise rebuild them with about ten kernel launches."""
        cache_key = (like.dtype, like.device)
        block = self.folded_blocks.get(cache_key)
        if block is None:
            scale = self.head_dim ** -0.5
            columns_key = (scale, like.dtype, like.device)
            columns = self.fold_cache.get(columns_key)
            if columns is None:
                columns = self.fold_cache[columns_key] = fold_bias_columns(
                    self.packed_bias.to(like.device), scale, like.dtype)
            extra = padded_width(self.head_dim + 2) - self.head_dim
            tail_key = ("query tail", extra, like.dtype, like.device)
            tail = self.fold_cache.get(tail_key)
            if tail is None:
                tail = self.fold_cache[tail_key] = query_tail(extra, like)
            block = fold_block(self.packed_keys, self.packed_values, columns, tail)
            self.folded_blocks[cache_key] = block
        return block


def fold_bias_columns(bias: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """(K,) float32 logit bias -> (K, 2) [hi, lo] key columns in dtype with hi + lo = bias/scale
    to about twice the dtype's precision (one bf16 column alone is off by up to 2^-8 relative:
    a logit error of ~0.01 at w = 2.5, d = 64)."""
    folded = bias.to(torch.float32) / scale
    high = folded.to(dtype)
    return torch.stack([high, (folded - high.float()).to(dtype)], dim=1)


class FoldedBlock(NamedTuple):
    """Reference keys/values in the fused attention's folded form, width = d + 2 padded to 8.

    keys: (heads, K, width) [k, hi, lo, 0...] with hi + lo = w/scale (fold_bias_columns).
    values: (heads, K, width) [v, 0...].
    query_tail: (width - d,) [1, 1, 0...]: queries [q, tail] pick up hi + lo for reference keys
        and 0 for the image's own keys, whose extra columns are zero.
    """
    keys: torch.Tensor
    values: torch.Tensor
    query_tail: torch.Tensor


def query_tail(length: int, like: torch.Tensor) -> torch.Tensor:
    """(length,) [1, 1, 0...] in like's dtype and device."""
    tail = torch.zeros(length, dtype=like.dtype, device=like.device)
    tail[:2].fill_(1)
    return tail


def fold_block(ref_k, ref_v, columns, tail) -> FoldedBlock:
    """ref_k, ref_v: (H, K, d); columns: (K, 2) fold_bias_columns; tail: query_tail, whose
    dtype and device the block takes."""
    heads, kept, _ = ref_k.shape
    extra = tail.shape[0]
    # One cat writes keys, bias columns and the zero padding (a pad would be a second copy).
    zeros = tail[2:].expand(heads, kept, extra - 2)
    keys = torch.cat([ref_k.to(device=tail.device, dtype=tail.dtype), columns.expand(heads, -1, -1), zeros], dim=-1)
    values = F.pad(ref_v.to(device=tail.device, dtype=tail.dtype), (0, extra))
    return FoldedBlock(keys, values, tail)


@dataclass(frozen=True)
class PackLayout:
    """Which reference keys are kept. It depends on the mask and the weights only, so callers
    compute it once per run and layer grid and reuse it at every step (see pack_layout).

    key_mask: (R, M) bool, mask & (w != 0).
    index: (K,) long flat positions r*M + m of the kept keys, reference-major, key order kept.
    bias: (K,) float32, w_r of each kept key.
    weights: (R,) float32.
    offsets: R+1 Python ints; reference r owns packed positions offsets[r]:offsets[r+1].
    fold_cache: ReferenceKV.folded's bias columns and query tail, cached across the steps.
    """

    key_mask: torch.Tensor
    index: torch.Tensor
    bias: torch.Tensor
    weights: torch.Tensor
    offsets: tuple
    fold_cache: dict = field(default_factory=dict, compare=False, repr=False)


def _host_weights(weights, refs: int) -> list:
    if torch.is_tensor(weights):
        weights = weights.detach().reshape(-1).tolist()  # one sync when they live on a device
    weights = [float(w) for w in weights]
    if len(weights) != refs:
        raise ValueError(f"expected {refs} weights, got {len(weights)}")
    return weights


def pack_layout(key_mask: torch.Tensor, weights, device=None) -> PackLayout:
    """Kept-key layout of (R, M) bool key_mask and (R,) weights (tensor or floats), with its
    tensors on device (default: key_mask's). Reads the mask (and weights) on the host: this
    synchronises with a device, so compute it once, not per step."""
    if key_mask.dim() != 2:
        raise ValueError(f"key_mask must be (R, M), got {tuple(key_mask.shape)}")
    device = key_mask.device if device is None else torch.device(device)
    host_weights = _host_weights(weights, key_mask.shape[0])
    weight_tensor = torch.tensor(host_weights, dtype=torch.float32)
    # The reference multiplies the mask by w before its `!= 0` test: w == 0 drops the reference.
    kept = key_mask.detach().to(device="cpu", dtype=torch.bool) & (weight_tensor != 0)[:, None]
    counts = kept.sum(dim=1)
    offsets = [0]
    for count in counts.tolist():
        offsets.append(offsets[-1] + count)
    return PackLayout(
        key_mask=kept.to(device),
        index=torch.nonzero(kept.reshape(-1)).squeeze(1).to(device),
        bias=weight_tensor.repeat_interleave(counts).to(device),
        weights=weight_tensor.to(device),
        offsets=tuple(offsets),
    )


def make_reference_kv(keys, values, key_mask, weights, heads: int, layout: PackLayout | None = None) -> ReferenceKV:
    """Prepare reference keys/values of one layer.

    keys, values: (R, M, C) with C = heads*d head-major; key_mask: (R, M) bool (concept mask at
    the layer resolution, row-major); weights: (R,) tensor or sequence of floats; heads: int.
    layout: pack_layout(key_mask, weights, keys.device), computed once by the caller; with it
    this function never synchronises with the device (only shapes and devices are checked, so
    it must come from this key_mask and these weights). None computes it here (synchronises).
    """
    if keys.dim() != 3 or keys.shape != values.shape:
        raise ValueError(f"keys/values must both be (R, M, C), got {tuple(keys.shape)}, {tuple(values.shape)}")
    refs, tokens, channels = keys.shape
    if channels % heads:
        raise ValueError(f"channels {channels} not divisible by heads {heads}")
    if tuple(key_mask.shape) != (refs, tokens):
        raise ValueError(f"key_mask must be {(refs, tokens)}, got {tuple(key_mask.shape)}")
    if layout is None:
        layout = pack_layout(key_mask, weights, keys.device)
    elif tuple(layout.key_mask.shape) != (refs, tokens) or len(weights) != refs:
        raise ValueError(
            f"layout is for key_mask {tuple(layout.key_mask.shape)}, got {(refs, tokens)} and {len(weights)} weights"
        )
    elif layout.index.device != keys.device:
        raise ValueError(f"layout lives on {layout.index.device}, keys on {keys.device}")

    head_dim = channels // heads
    # Gathering the kept flat positions keeps reference-major, then key order:
    # (K, heads, d) -> (heads, K, d).
    packed_keys = keys.reshape(refs * tokens, heads, head_dim).index_select(0, layout.index).permute(1, 0, 2)
    packed_values = values.reshape(refs * tokens, heads, head_dim).index_select(0, layout.index).permute(1, 0, 2)
    return ReferenceKV(
        heads=heads,
        keys=keys,
        values=values,
        key_mask=layout.key_mask,
        weights=layout.weights,
        packed_keys=packed_keys,
        packed_values=packed_values,
        packed_bias=layout.bias,
        offsets=layout.offsets,
        fold_cache=layout.fold_cache,
    )
