"""Reference keys/values of one self-attention layer, prepared once and reused by RSA and RBA.

Bias rule of the reference code: the logit of reference i's key m is q.k*scale + w_i when the
key lies inside concept mask i, and the key is excluded (dtype minimum, i.e. -inf) otherwise.
The reference tests `mask * w_i != 0`, so a weight of exactly 0 removes reference i entirely.
"""
import weakref
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


@dataclass(frozen=True)
class _PackLayout:
    """Which keys are kept, derived from a mask and the weights only: the same at every step."""

    key_mask: torch.Tensor      # (R, M) bool, mask & (w != 0)
    index: torch.Tensor         # (K,) long flat positions r*M + m of the kept keys, in order
    bias: torch.Tensor          # (K,) float32
    weights: torch.Tensor       # (R,) float32
    offsets: tuple


# id(mask) -> (weak reference to the mask, its version, host weights, layout). Callers pass the
# same cached mask tensor at every step of a run; reusing its layout removes the host syncs of
# boolean indexing and of the per-reference counts from the per-layer, per-step path.
_LAYOUTS = {}


def _host_weights(weights, refs: int) -> tuple:
    if torch.is_tensor(weights):
        weights = weights.detach().reshape(-1).tolist()  # one sync when they live on a device
    weights = tuple(float(w) for w in weights)
    if len(weights) != refs:
        raise ValueError(f"expected {refs} weights, got {len(weights)}")
    return weights


def _version(tensor: torch.Tensor):
    """In-place change counter; inference tensors have none (callers never mutate their masks)."""
    return None if tensor.is_inference() else tensor._version


def _pack_layout(key_mask: torch.Tensor, weights: tuple, device) -> _PackLayout:
    cached = _LAYOUTS.get(id(key_mask))
    if cached is not None and cached[0]() is key_mask and cached[1] == _version(key_mask) \
            and cached[2] == weights and cached[3].index.device == device:
        return cached[3]
    refs, tokens = key_mask.shape
    weight_tensor = torch.tensor(weights, dtype=torch.float32, device=device)
    # The reference multiplies the mask by w before its `!= 0` test: w == 0 drops the reference.
    kept = key_mask.to(device=device, dtype=torch.bool) & (weight_tensor != 0)[:, None]
    counts = kept.sum(dim=1).tolist()
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + int(count))
    index = torch.nonzero(kept.reshape(-1)).squeeze(1)
    bias = weight_tensor.repeat_interleave(torch.tensor(counts, device=device), output_size=offsets[-1])
    layout = _PackLayout(kept, index, bias, weight_tensor, tuple(offsets))
    for key in [k for k, entry in _LAYOUTS.items() if entry[0]() is None]:
        del _LAYOUTS[key]
    _LAYOUTS[id(key_mask)] = (weakref.ref(key_mask), _version(key_mask), weights, layout)
    return layout


def make_reference_kv(keys, values, key_mask, weights, heads: int) -> ReferenceKV:
    """Prepare reference keys/values of one layer.

    keys, values: (R, M, C) with C = heads*d head-major; key_mask: (R, M) bool (concept mask at
    the layer resolution, row-major); weights: (R,) tensor or sequence of floats; heads: int.
    With the same key_mask tensor and weights as a previous call, the kept-key layout is reused
    and no host-device synchronisation happens (weights given as floats or a CPU tensor).
    """
    if keys.dim() != 3 or keys.shape != values.shape:
        raise ValueError(f"keys/values must both be (R, M, C), got {tuple(keys.shape)}, {tuple(values.shape)}")
    refs, tokens, channels = keys.shape
    if channels % heads:
        raise ValueError(f"channels {channels} not divisible by heads {heads}")
    if tuple(key_mask.shape) != (refs, tokens):
        raise ValueError(f"key_mask must be {(refs, tokens)}, got {tuple(key_mask.shape)}")
    layout = _pack_layout(key_mask, _host_weights(weights, refs), keys.device)

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
    )
