"""Plain, reference-aware (RSA) and region-grouped blend (RBA) self-attention.

All public functions take q, k, v as (B, N, C), C = heads*d head-major, N = h*w tokens
row-major, and return (B, N, C) in q's dtype.

impl="fast" (and "auto") never materialises query x key logits: masked-out reference keys are
dropped (ReferenceKV's packed form) and the per-key bias is folded into extra head dimensions so
one fused scaled_dot_product_attention call does the joint softmax:
    q' = [q, 1, 1, 0...],  k' = [k, hi, lo, 0...] with hi + lo = bias / scale (own keys: 0),
    v' = [v, 0...] (padded too: fused kernels need equal q/k/v head dims),
and q'.k' * scale = q.k * scale + bias. hi/lo is a two-term split of bias/scale in the compute
dtype, so fp16/bf16 keep the bias to ~fp32 accuracy. The widths are padded to a multiple of 8.
The fast path never synchronises with the host (no .item(), boolean indexing or nonzero): it
runs once per layer and step, where a sync stalls the CPU that queues the GPU's work.
impl="plain" materialises the logits exactly like the reference code (oracle for tests).
"""
import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .heads_layout import compute_dtype, merge_heads, split_heads
from .reference_kv import FoldedBlock, ReferenceKV

IMPLS = ("auto", "fast", "plain")


def _use_fast_path(impl: str) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    # "auto" is "fast": far smaller than the materialised path and free of host syncs, which
    # bound the GPU pipeline. On CPU fast RBA (R+1 full-query attentions) can be the slower one.
    return impl != "plain"


def plain_attention(q, k, v, heads: int) -> torch.Tensor:
    """Ordinary per-row self-attention softmax(q k^T / sqrt(d)) v, (B, N, C) -> (B, N, C)."""
    dtype = compute_dtype(q)
    out = F.scaled_dot_product_attention(
        split_heads(q, heads, dtype), split_heads(k, heads, dtype), split_heads(v, heads, dtype)
    )
    return merge_heads(out).to(q.dtype)


def _extend_queries(q_h, tail) -> torch.Tensor:
    """(B, H, Nq, d) -> (B, H, Nq, d + len(tail)) queries [q, tail] (FoldedBlock.query_tail)."""
    return torch.cat([q_h, tail.expand(*q_h.shape[:-1], -1)], dim=-1)


def _pad_heads(x: torch.Tensor, width: int) -> torch.Tensor:
    """(..., d) -> (..., width) with zero columns: own keys (bias 0) and all values."""
    return F.pad(x, (0, width - x.shape[-1]))


def _joint_attention(q_ext, own_k, own_v, ref_keys, ref_values, scale: float, dim: int):
    """One fused softmax over own keys and a reference block, all already folded to width.

    q_ext: (B, H, Nq, width); own_k, own_v: (B, H, Nk, width); ref_keys, ref_values:
    (H, K, width). Returns (B, H, Nq, dim).
    """
    batch = q_ext.shape[0]
    keys = torch.cat([own_k, ref_keys.expand(batch, -1, -1, -1)], dim=2)
    values = torch.cat([own_v, ref_values.expand(batch, -1, -1, -1)], dim=2)
    return F.scaled_dot_product_attention(q_ext, keys, values, scale=scale)[..., :dim]


def _fold_bias_attention(q_h, k_h, v_h, block, scale: float):
    """Joint softmax over own keys (bias 0) and a FoldedBlock of references (ReferenceKV.folded).

    q_h: (B, H, Nq, d); k_h, v_h: (B, H, Nk, d). Returns (B, H, Nq, d) in q_h's dtype.
    """
    width = block.keys.shape[-1]
    return _joint_attention(
        _extend_queries(q_h, block.query_tail), _pad_heads(k_h, width), _pad_heads(v_h, width),
        block.keys, block.values, scale, q_h.shape[-1],
    )


def _materialised_attention(q_h, k_h, v_h, ref_k, ref_v, ref_bias, scale: float):
    """Reference-code joint attention with dense logits (oracle; float32 internally).

    q_h: (B, H, Nq, d); k_h, v_h: (B, H, Nk, d); ref_k, ref_v: (H, M, d) all reference keys;
    ref_bias: (M,) with w_i inside masks and float32 min outside. Returns (B, H, Nq, d) float32.
    """
    q_h, k_h, v_h = q_h.float(), k_h.float(), v_h.float()
    batch = q_h.shape[0]
    keys = torch.cat([k_h, ref_k.float().expand(batch, -1, -1, -1)], dim=2)
    values = torch.cat([v_h, ref_v.float().expand(batch, -1, -1, -1)], dim=2)
    logits = torch.einsum("bhid,bhjd->bhij", q_h, keys) * scale
    own = k_h.shape[2]
    logits[..., own:] = logits[..., own:] + ref_bias.float()
    return torch.einsum("bhij,bhjd->bhid", logits.softmax(dim=-1), values)


def _dense_reference_block(refs: ReferenceKV, indices):
    """All keys/values of the given references in head layout (H, len*M, d) plus their (len*M,)
    float32 dense bias, in reference order."""
    keys = torch.cat([split_heads(refs.keys[i : i + 1], refs.heads)[0] for i in indices], dim=1)
    values = torch.cat([split_heads(refs.values[i : i + 1], refs.heads)[0] for i in indices], dim=1)
    bias = torch.cat([refs.dense_bias(i, torch.float32) for i in indices])
    return keys, values, bias


def _check_refs(q, refs: ReferenceKV, heads: int):
    if refs.heads != heads or refs.keys.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"references prepared for heads={refs.heads}, C={refs.keys.shape[-1]}; "
            f"called with heads={heads}, C={q.shape[-1]}"
        )


def rsa_attention(q, k, v, refs: ReferenceKV, heads: int, impl: str = "auto") -> torch.Tensor:
    """Reference-aware self-attention (early steps).

    Every row b of q (B, N, C) is a target row: it attends in ONE softmax to its own k[b], v[b]
    (B, N, C) and to all references' kept keys with bias w_i. With no kept reference key the
    result is plain_attention exactly. Returns (B, N, C).
    """
    _check_refs(q, refs, heads)
    fast = _use_fast_path(impl)
    if refs.total_kept == 0:
        return plain_attention(q, k, v, heads)
    dtype = compute_dtype(q)
    q_h, k_h, v_h = (split_heads(t, heads, dtype) for t in (q, k, v))
    scale = refs.head_dim ** -0.5
    if fast:
        out = _fold_bias_attention(q_h, k_h, v_h, refs.folded(q_h), scale)
    else:
        ref_k, ref_v, bias = _dense_reference_block(refs, range(refs.num_refs))
        out = _materialised_attention(q_h, k_h, v_h, ref_k, ref_v, bias, scale)
    return merge_heads(out).to(q.dtype)


def concept_owner(regions: torch.Tensor) -> torch.Tensor:
    """(B, R, N) bool regions -> (B, N) long owner concept, -1 where none. Where regions overlap
    the later concept wins, as the reference code's overwrite order. No host synchronisation."""
    owner = torch.full(regions[:, 0].shape, -1, dtype=torch.long, device=regions.device)
    for index in range(regions.shape[1]):
        owner = torch.where(regions[:, index], index, owner)
    return owner


class _BlendInputs(NamedTuple):
    """What both fast RBA forms start from: per-head q/k/v (B, H, N, d), plain attention for
    every pixel (B, H, N, d), and the references' FoldedBlock of width `width`."""
    q_h: torch.Tensor
    k_h: torch.Tensor
    v_h: torch.Tensor
    plain: torch.Tensor
    block: FoldedBlock
    width: int
    scale: float


def _blend_inputs(q, k, v, refs: ReferenceKV, heads: int) -> _BlendInputs:
    dtype = compute_dtype(q)
    q_h, k_h, v_h = (split_heads(t, heads, dtype) for t in (q, k, v))
    # The same call as plain_attention, so pixels that blend nowhere stay bit-identical to it.
    plain = F.scaled_dot_product_attention(q_h, k_h, v_h)
    block = refs.folded(q_h)
    return _BlendInputs(q_h, k_h, v_h, plain, block, block.keys.shape[-1], refs.head_dim ** -0.5)


def _rba_fast(q, k, v, refs: ReferenceKV, owner, heads: int) -> torch.Tensor:
    """Every pixel of every row is computed plain and blended with each reference that has kept
    keys; torch.where picks per pixel. (R+1) full-query attentions, for callers without
    concept_pixel_groups (finding the groups synchronises with the host); with them,
    _rba_gathered does the same for the concepts' pixels only.

    q, k, v: (B, N, C); owner: (B, N) long (concept_owner). Returns (B, N, C).
    """
    blended = [index for index in range(refs.num_refs) if refs.num_kept(index)]
    if not blended:
        return plain_attention(q, k, v, heads)
    parts = _blend_inputs(q, k, v, refs, heads)
    out, dim, width = parts.plain, parts.q_h.shape[-1], parts.width
    q_ext = _extend_queries(parts.q_h, parts.block.query_tail)
    own_k, own_v = _pad_heads(parts.k_h, width), _pad_heads(parts.v_h, width)
    owner_h = owner[:, None, :, None]  # (B, 1, N, 1): broadcast over heads and channels
    for index in blended:
        span = refs.kept_slice(index)
        blend = _joint_attention(q_ext, own_k, own_v, parts.block.keys[:, span], parts.block.values[:, span],
                                 parts.scale, dim)
        out = torch.where(owner_h == index, blend, out)
    return merge_heads(out).to(q.dtype)


def concept_pixel_groups(regions: torch.Tensor) -> tuple:
    """Each concept's pixels per row, for the gathered RBA path.

    regions: (B, R, N) bool. Returns, per row, a tuple of R (count_i,) long pixel indices in
    ascending order, owner rule of concept_owner. Reads the group sizes on the host: ONE host
    synchronisation for all rows and concepts, so call it once per model call and layer grid
    (or pixel_groups_of_grids once for all grids).
    """
    return pixel_groups_of_grids([regions])[0]


def pixel_groups_of_grids(regions_per_grid) -> list:
    """concept_pixel_groups of the regions of several layer grids, with one host sync for all."""
    sorted_owners = []
    for regions in regions_per_grid:
        owner = concept_owner(regions)
        # A stable sort by owner lists the -1 pixels first, then concept 0's, 1's, ... each in pixel order.
        order = torch.argsort(owner, dim=1, stable=True)
        values = torch.arange(-1, regions.shape[1], device=owner.device)
        sorted_owners.append((order, (owner[:, None, :] == values[None, :, None]).sum(dim=2)))
    counts = torch.cat([grid_counts.reshape(-1) for _, grid_counts in sorted_owners]).tolist()
    result, position = [], 0
    for order, grid_counts in sorted_owners:
        rows, slots = grid_counts.shape
        groups = []
        for row in range(rows):
            row_counts = counts[position: position + slots]
            position += slots
            bounds = list(itertools.accumulate(row_counts))  # bounds[i]: where concept i's pixels start
            groups.append(tuple(order[row, bounds[i]: bounds[i + 1]] for i in range(slots - 1)))
        result.append(tuple(groups))
    return result


def _rba_gathered(q, k, v, refs: ReferenceKV, groups, heads: int) -> torch.Tensor:
    """Fast RBA on each concept's own pixels only: plain attention for all pixels, then each
    concept's pixels are gathered, blended with its reference and written back. Same result as
    _rba_fast, for the arithmetic of the concepts' areas instead of R whole images; the group
    sizes are host ints (concept_pixel_groups), so nothing here synchronises.

    q, k, v: (B, N, C); groups: concept_pixel_groups(regions). Returns (B, N, C).
    """
    parts = _blend_inputs(q, k, v, refs, heads)
    out, dim, width = parts.plain, parts.q_h.shape[-1], parts.width
    for row, row_groups in enumerate(groups):
        own_k, own_v = _pad_heads(parts.k_h[row : row + 1], width), _pad_heads(parts.v_h[row : row + 1], width)
        for index, pixels in enumerate(row_groups):
            if pixels.numel() == 0 or refs.num_kept(index) == 0:
                continue
            span = refs.kept_slice(index)
            q_ext = _extend_queries(parts.q_h[row : row + 1, :, pixels], parts.block.query_tail)
            out[row : row + 1, :, pixels] = _joint_attention(
                q_ext, own_k, own_v, parts.block.keys[:, span], parts.block.values[:, span], parts.scale, dim
            )
    return merge_heads(out).to(q.dtype)


def _rba_materialised(q, k, v, refs: ReferenceKV, owner, heads: int) -> torch.Tensor:
    """Oracle: gathers each concept's pixels (host synchronisations) and materialises logits.
    Edits owner (B, N) in place."""
    for index in range(refs.num_refs):
        # A reference with no kept key adds only exp(-inf) terms: its pixels stay plain.
        if refs.num_kept(index) == 0:
            owner[owner == index] = -1
    if not bool((owner >= 0).any()):
        return plain_attention(q, k, v, heads)
    dtype = compute_dtype(q)
    scale = refs.head_dim ** -0.5
    out = torch.empty_like(q)
    # Each pixel is computed once, in its group: plain pixels (-1) over own keys only.
    for row in range(q.shape[0]):
        k_h = split_heads(k[row : row + 1], heads, dtype)
        v_h = split_heads(v[row : row + 1], heads, dtype)
        for index in range(-1, refs.num_refs):
            pixels = torch.nonzero(owner[row] == index).squeeze(1)
            if pixels.numel() == 0:
                continue
            q_h = split_heads(q[row : row + 1, pixels], heads, dtype)
            if index < 0:
                result = F.scaled_dot_product_attention(q_h, k_h, v_h)
            else:
                ref_k, ref_v, bias = _dense_reference_block(refs, [index])
                result = _materialised_attention(q_h, k_h, v_h, ref_k, ref_v, bias, scale)
            out[row, pixels] = merge_heads(result)[0].to(q.dtype)
    return out


def rba_attention(q, k, v, refs: ReferenceKV, regions, heads: int, impl: str = "auto",
                  groups=None) -> torch.Tensor:
    """Region-grouped blend attention (late steps).

    q, k, v: (B, N, C) target rows; regions: (B, R, N) bool, concept i's pixels at this layer.
    Pixels owned by concept i (see concept_owner) attend to their own keys plus reference i's
    keys only (same bias rule); all other pixels get plain self-attention. When no pixel blends
    (no region, or no kept key in the owning references) the result is plain_attention exactly.
    groups: concept_pixel_groups(regions), made once per grid; with it the fast path computes
    the blend for each concept's pixels only instead of for every pixel R times.
    The fast path never synchronises with the host. Returns (B, N, C).
    """
    _check_refs(q, refs, heads)
    fast = _use_fast_path(impl)
    batch, tokens, _ = q.shape
    if tuple(regions.shape) != (batch, refs.num_refs, tokens):
        raise ValueError(f"regions must be {(batch, refs.num_refs, tokens)}, got {tuple(regions.shape)}")
    if fast and groups is not None:
        if len(groups) != batch or any(len(row) != refs.num_refs for row in groups):
            raise ValueError(f"groups must hold {refs.num_refs} pixel sets for each of {batch} rows")
        return _rba_gathered(q, k, v, refs, groups, heads)
    owner = concept_owner(regions.to(device=q.device, dtype=torch.bool))
    return (_rba_fast if fast else _rba_materialised)(q, k, v, refs, owner, heads)
