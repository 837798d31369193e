"""Reference keys/values of one self-attention layer, prepared once and reused by RSA and RBA.

Bias rule of the reference code: the logit of reference i's key m is q.k*scale + w_i when the
key lies inside concept mask i, and the key is excluded (dtype minimum, i.e. -inf) otherwise.
The reference tests `mask * w_i != 0`, so a weight of exactly 0 removes reference i entirely.
"""
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .heads_layout import padded_width

# A query that must not see reference j puts -EXCLUSION in the folded column where j's keys hold
# 1: their logits fall by EXCLUSION * scale (over 1000 for any head width up to 256), so exp()
# gives exactly 0, while every other key's dot product gains only exact zeros. A power of two,
# exact in float16 and bfloat16.
EXCLUSION = 2.0 ** 14


@dataclass(frozen=True)
class PackLayout:
    """Which reference keys are kept. It depends on the mask and the weights only, so callers
    compute it once per run and layer grid and reuse it at every step (see pack_layout).

    key_mask: (R, M) bool, mask & (w != 0).
    index: (K,) long flat positions r*M + m of the kept keys, reference-major, key order kept.
    weights: (R,) float32.
    offsets: R+1 Python ints; reference r owns packed positions offsets[r]:offsets[r+1].
    fold_cache: fold_constants' tensors, reused at every step.
    """

    key_mask: torch.Tensor
    index: torch.Tensor
    weights: torch.Tensor
    offsets: tuple
    fold_cache: dict = field(default_factory=dict, compare=False, repr=False)

    def fold_constants(self, head_dim: int, like: torch.Tensor) -> "FoldConstants":
        """The step-independent pieces of a FoldedBlock in like's dtype and device, made once."""
        key = (head_dim, like.dtype, like.device)
        constants = self.fold_cache.get(key)
        if constants is None:
            refs, tokens = self.key_mask.shape
            extra = padded_width(head_dim + 2 + refs) - head_dim
            every_key_bias = self.weights.to(like.device).repeat_interleave(tokens)
            bias_columns = fold_bias_columns(every_key_bias, head_dim ** -0.5, like.dtype)
            owner_columns = torch.eye(refs, dtype=like.dtype, device=like.device).repeat_interleave(tokens, dim=0)
            constants = self.fold_cache[key] = FoldConstants(
                columns=torch.cat([bias_columns, owner_columns], dim=1),
                query_tail=query_tail(extra, like),
                concept_tails=concept_tails(refs, extra, like),
                zeros=torch.zeros(extra, dtype=like.dtype, device=like.device))
        return constants


class FoldConstants(NamedTuple):
    """columns: (R*M, 2 + R) of every reference key (dropped ones included, so the fold can run
    before the kept keys are picked): fold_bias_columns, then a one-hot of the key's reference;
    query_tail: (e,) [1, 1, 0...]; concept_tails: (R, e) (FoldedBlock); zeros: (e,), with
    e = width - d."""
    columns: torch.Tensor
    query_tail: torch.Tensor
    concept_tails: torch.Tensor
    zeros: torch.Tensor


class FoldedBlock(NamedTuple):
    """The kept reference keys and values in the fused attention's folded form, side by side in
    one tensor so that joining them to an image's own keys and values is one concatenation.

    kv: (heads, K, 2*width): [k, hi, lo, one-hot of the key's reference, 0... | v, 0...], width =
        d + 2 + R padded to 8, with hi + lo = w/scale (fold_bias_columns); keys are
        kv[..., :width], values kv[..., width:].
    query_tail: (width - d,) [1, 1, 0...]: queries [q, tail] pick up hi + lo for reference keys
        and 0 for the image's own keys, whose extra columns are `zeros` (RSA: all references).
    concept_tails: (R, width - d): row i is query_tail with -EXCLUSION in the one-hot column of
        every reference but i: queries [q, row i] see their own keys and reference i only (RBA),
        so the pixels of several concepts share one call over the whole block.
    zeros: (width - d,) the extra columns of the image's own keys and values.
    """
    kv: torch.Tensor
    query_tail: torch.Tensor
    concept_tails: torch.Tensor
    zeros: torch.Tensor


@dataclass(frozen=True)
class ReferenceKV:
    """Prepared reference keys/values of one layer.

    Dense form (materialised oracle path):
        keys, values: (R, M, C), C = heads*d head-major; M = h*w tokens of the layer.
        key_mask: (R, M) bool, True where the key takes part (inside the mask and w_i != 0).
        weights: (R,) float32 logit bias per reference.
    Packed form: only the K kept keys, reference-major, key order preserved (layout: PackLayout).
        offsets: R+1 Python ints; reference i owns packed positions offsets[i]:offsets[i+1].
    Folded form (what the fused attention reads): see folded().
    """

    heads: int
    keys: torch.Tensor
    values: torch.Tensor
    layout: PackLayout
    # This object's folded blocks, reused by every call that reads these references.
    folded_blocks: dict = field(default_factory=dict, compare=False, repr=False)

    key_mask = property(lambda self: self.layout.key_mask)
    weights = property(lambda self: self.layout.weights)
    offsets = property(lambda self: self.layout.offsets)

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
        """Positions of reference `index`'s kept keys in the packed and folded tensors."""
        return slice(self.offsets[index], self.offsets[index + 1])

    def num_kept(self, index: int) -> int:
        return self.offsets[index + 1] - self.offsets[index]

    def dense_bias(self, index: int, dtype: torch.dtype) -> torch.Tensor:
        """(M,) additive logit bias of reference `index` exactly as the reference builds it:
        w_i inside the mask, the dtype's most negative value outside."""
        weight = self.weights[index].to(dtype)
        excluded = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=self.keys.device)
        return torch.where(self.key_mask[index], weight, excluded)

    def folded(self, like: torch.Tensor) -> FoldedBlock:
        """The kept references folded for the fused attention (FoldedBlock) in like's dtype and
        device. Made once per dtype and device: every attention call reading these references
        (one per step, or several with reused references) shares it."""
        cache_key = (like.dtype, like.device)
        block = self.folded_blocks.get(cache_key)
        if block is None:
            constants = self.layout.fold_constants(self.head_dim, like)
            block = self.folded_blocks[cache_key] = fold_block(
                self.keys, self.values, self.heads, self.layout.index, constants)
        return block


def fold_bias_columns(bias: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """(K,) float32 logit bias -> (K, 2) [hi, lo] key columns in dtype with hi + lo = bias/scale
    to about twice the dtype's precision (one bf16 column alone is off by up to 2^-8 relative:
    a logit error of ~0.01 at w = 2.5, d = 64)."""
    folded = bias.to(torch.float32) / scale
    high = folded.to(dtype)
    return torch.stack([high, (folded - high.float()).to(dtype)], dim=1)


def query_tail(length: int, like: torch.Tensor) -> torch.Tensor:
    """(length,) [1, 1, 0...] in like's dtype and device."""
    tail = torch.zeros(length, dtype=like.dtype, device=like.device)
    tail[:2].fill_(1)
    return tail


def concept_tails(refs: int, length: int, like: torch.Tensor) -> torch.Tensor:
    """(refs, length): row i = query_tail with -EXCLUSION at the one-hot columns 2 + j, j != i."""
    tails = torch.zeros(refs, length, dtype=like.dtype, device=like.device)
    tails[:, :2].fill_(1)
    eye = torch.eye(refs, dtype=like.dtype, device=like.device)
    tails[:, 2 : 2 + refs].copy_(eye.sub(1).mul(EXCLUSION))  # -EXCLUSION off the diagonal, 0 on it
    return tails


def fold_block(keys, values, heads: int, index, constants: FoldConstants) -> FoldedBlock:
    """keys, values: (R, M, heads*d); index: (K,) kept flat positions (PackLayout.index);
    constants: PackLayout.fold_constants, whose dtype and device the block takes."""
    refs, tokens, channels = keys.shape
    flat = refs * tokens
    dtype, device = constants.query_tail.dtype, constants.query_tail.device
    key_part, value_part = (t.reshape(flat, heads, channels // heads).to(device=device, dtype=dtype)
                            for t in (keys, values))
    extra, columns = constants.zeros.shape[0], constants.columns.shape[1]
    # One cat writes keys, bias and reference columns, values and the zero padding of every
    # reference key, one gather keeps the masked ones: two launches per layer and step.
    every_key = torch.cat([key_part, constants.columns[:, None].expand(flat, heads, columns),
                           constants.zeros[columns:].expand(flat, heads, extra - columns),
                           value_part, constants.zeros.expand(flat, heads, extra)], dim=-1)
    kv = every_key.index_select(0, index).transpose(0, 1)
    return FoldedBlock(kv, constants.query_tail, constants.concept_tails, constants.zeros)


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

    return ReferenceKV(heads=heads, keys=keys, values=values, layout=layout)
