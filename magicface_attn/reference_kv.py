"""Reference keys/values of one self-attention layer, prepared once and reused by RSA and RBA.

Bias rule of the reference code: the logit of reference i's key m is q.k*scale + w_i when the
key lies inside concept mask i, and the key is excluded (dtype minimum, i.e. -inf) otherwise.
The reference tests `mask * w_i != 0`, so a weight of exactly 0 removes reference i entirely.
"""
from dataclasses import dataclass

import torch


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


def make_reference_kv(keys, values, key_mask, weights, heads: int) -> ReferenceKV:
    """Prepare reference keys/values of one layer.

    keys, values: (R, M, C) with C = heads*d head-major; key_mask: (R, M) bool (concept mask at
    the layer resolution, row-major); weights: (R,) tensor or sequence of floats; heads: int.
    """
    if keys.dim() != 3 or keys.shape != values.shape:
        raise ValueError(f"keys/values must both be (R, M, C), got {tuple(keys.shape)}, {tuple(values.shape)}")
    refs, tokens, channels = keys.shape
    if channels % heads:
        raise ValueError(f"channels {channels} not divisible by heads {heads}")
    if tuple(key_mask.shape) != (refs, tokens):
        raise ValueError(f"key_mask must be {(refs, tokens)}, got {tuple(key_mask.shape)}")
    weights = torch.as_tensor(weights, dtype=torch.float32, device=keys.device).reshape(-1)
    if weights.numel() != refs:
        raise ValueError(f"expected {refs} weights, got {weights.numel()}")
    # The reference multiplies the mask by w before its `!= 0` test: w == 0 drops the reference.
    key_mask = key_mask.to(device=keys.device, dtype=torch.bool) & (weights != 0)[:, None]
    counts = key_mask.sum(dim=1).tolist()
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + int(count))

    head_dim = channels // heads
    # Boolean indexing keeps reference-major, then key order: (K, heads, d) -> (heads, K, d).
    packed_keys = keys.view(refs, tokens, heads, head_dim)[key_mask].permute(1, 0, 2)
    packed_values = values.view(refs, tokens, heads, head_dim)[key_mask].permute(1, 0, 2)
    packed_bias = weights[:, None].expand(refs, tokens)[key_mask]
    return ReferenceKV(
        heads=heads,
        keys=keys,
        values=values,
        key_mask=key_mask,
        weights=weights,
        packed_keys=packed_keys,
        packed_values=packed_values,
        packed_bias=packed_bias,
        offsets=tuple(offsets),
    )
