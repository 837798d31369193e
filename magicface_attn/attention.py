"""Plain, reference-aware (RSA) and region-grouped blend (RBA) self-attention.

All public functions take q, k, v as (B, N, C), C = heads*d head-major, N = h*w tokens
row-major, and return (B, N, C) in q's dtype. RSA can write into a given output and RBA can
start from a given plain attention (e.g. the host's own output rows), which saves the caller
a plain attention call and a concatenation per layer.

impl="fast" (and "auto") never materialises query x key logits: masked-out reference keys are
dropped (ReferenceKV's packed form) and the per-key bias is folded into extra head dimensions so
one fused scaled_dot_product_attention call does the joint softmax:
    q' = [q, 1, 1, 0...],  k' = [k, hi, lo, e_r, 0...] with hi + lo = bias / scale (own keys: 0)
    and e_r the one-hot of the key's reference r (own keys: 0),
    v' = [v, 0...] (padded too: fused kernels need equal q/k/v head dims),
and q'.k' * scale = q.k * scale + bias. Keys and values are built side by side in one tensor
(FoldedBlock.kv) and handed to the kernel as two views of it, so each join is one launch.
hi/lo is a two-term split of bias/scale in the compute dtype, so fp16/bf16 keep the bias to
~fp32 accuracy. RBA's queries put -EXCLUSION against the references of other concepts, so the
pixels of all concepts share one call. The widths are padded to a multiple of 8.
The fast path never synchronises with the host (no .item(), boolean indexing or nonzero): it
runs once per layer and step, where a sync stalls the CPU that queues the GPU's work.
impl="plain" materialises the logits exactly like the reference code (oracle for tests).
"""
import itertools

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
    """(B, H, Nq, d) -> (B, H, Nq, d + e) queries [q, tail]; tail: (e,) for every query
    (FoldedBlock.query_tail) or (Nq, e), one per query (RBA's concept tails)."""
    return torch.cat([q_h, tail.expand(*q_h.shape[:-1], -1)], dim=-1)


def _own_block(k_h, v_h, zeros) -> torch.Tensor:
    """(B, H, Nk, d) own keys and values -> (B, H, Nk, 2*width) [k, 0... | v, 0...] (bias 0)."""
    pad = zeros.expand(*k_h.shape[:-1], -1)
    return torch.cat([k_h, pad, v_h, pad], dim=-1)


def _joint_attention(q_ext, own_kv, ref_kv, scale: float, dim: int):
    """One fused softmax over own keys and a reference block, all already folded to width.

    q_ext: (B, H, Nq, width); own_kv: (B, H, Nk, 2*width) (_own_block); ref_kv: (H, K, 2*width)
    (a span of FoldedBlock.kv). Returns (B, H, Nq, dim), a view.
    """
    batch, width = q_ext.shape[0], q_ext.shape[-1]
    joined = torch.cat([own_kv, ref_kv.expand(batch, -1, -1, -1)], dim=2)
    return F.scaled_dot_product_attention(q_ext, joined[..., :width], joined[..., width:], scale=scale)[..., :dim]


def _fold_bias_attention(q_h, k_h, v_h, block: FoldedBlock, scale: float):
    """Joint softmax over own keys (bias 0) and a FoldedBlock of references (ReferenceKV.folded).

    q_h: (B, H, Nq, d); k_h, v_h: (B, H, Nk, d). Returns (B, H, Nq, d) in q_h's dtype.
    """
    own_kv = _own_block(k_h, v_h, block.zeros)
    return _joint_attention(_extend_queries(q_h, block.query_tail), own_kv, block.kv, scale, q_h.shape[-1])


def _write_heads(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """merge_heads(x) (B, H, N, d) written into out (B, N, H*d) in one copy; returns out."""
    if out.stride(-1) == 1:  # the channel axis splits into (H, d) as a view
        out.view(*out.shape[:-1], x.shape[1], x.shape[-1]).copy_(x.transpose(1, 2))
    else:
        out.copy_(merge_heads(x))
    return out


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


def rsa_attention(q, k, v, refs: ReferenceKV, heads: int, impl: str = "auto", out=None) -> torch.Tensor:
    """Reference-aware self-attention (early steps).

    Every row b of q (B, N, C) is a target row: it attends in ONE softmax to its own k[b], v[b]
    (B, N, C) and to all references' kept keys with bias w_i. With no kept reference key the
    result is plain_attention exactly. Returns (B, N, C); out: a (B, N, C) tensor to write the
    result into and return instead (e.g. the target's rows of the host's output).
    """
    _check_refs(q, refs, heads)
    fast = _use_fast_path(impl)
    dtype = compute_dtype(q)
    q_h, k_h, v_h = (split_heads(t, heads, dtype) for t in (q, k, v))
    scale = refs.head_dim ** -0.5
    if refs.total_kept == 0:
        result = F.scaled_dot_product_attention(q_h, k_h, v_h)  # plain_attention's call
    elif fast:
        result = _fold_bias_attention(q_h, k_h, v_h, refs.folded(q_h), scale)
    else:
        ref_k, ref_v, bias = _dense_reference_block(refs, range(refs.num_refs))
        result = _materialised_attention(q_h, k_h, v_h, ref_k, ref_v, bias, scale)
    if out is None:
        return merge_heads(result).to(q.dtype)
    return _write_heads(out, result)


def concept_owner(regions: torch.Tensor) -> torch.Tensor:
    """(B, R, N) bool regions -> (B, N) long owner concept, -1 where none. Where regions overlap
    the later concept wins, as the reference code's overwrite order. No host synchronisation."""
    owner = torch.full(regions[:, 0].shape, -1, dtype=torch.long, device=regions.device)
    for index in range(regions.shape[1]):
        owner = torch.where(regions[:, index], index, owner)
    return owner


def _rba_fast(q_h, k_h, v_h, refs: ReferenceKV, owner, plain_h, blended) -> torch.Tensor:
    """Every pixel of every row blended with each reference in `blended`; torch.where picks per
    pixel. (R+1) full-query attentions, for callers without concept_pixel_groups (finding the
    groups synchronises with the host); with them, _rba_gathered does the same for the
    concepts' pixels only.

    q_h, k_h, v_h, plain_h: (B, H, N, d); owner: (B, N) long (concept_owner). Returns (B, H, N, d).
    """
    block = refs.folded(q_h)
    scale, dim = refs.head_dim ** -0.5, q_h.shape[-1]
    q_ext = _extend_queries(q_h, block.query_tail)
    own_kv = _own_block(k_h, v_h, block.zeros)
    owner_h = owner[:, None, :, None]  # (B, 1, N, 1): broadcast over heads and channels
    out = plain_h
    for index in blended:
        blend = _joint_attention(q_ext, own_kv, block.kv[:, refs.kept_slice(index)], scale, dim)
        out = torch.where(owner_h == index, blend, out)
    return out


class PixelGroups(tuple):
    """One row's concept pixel sets: a tuple of R (count_i,) long tensors, cut from one pixel
    order sorted by owner, so the pixels of consecutive concepts are one view too (span)."""

    def __new__(cls, order: torch.Tensor, bounds):
        """order: (N,) pixels sorted by owner; bounds: R + 1 host ints, concept i's pixels are
        order[bounds[i]:bounds[i + 1]]."""
        groups = super().__new__(cls, (order[bounds[i]: bounds[i + 1]] for i in range(len(bounds) - 1)))
        groups._order, groups._bounds = order, tuple(bounds)
        return groups

    def span(self, first: int, stop: int) -> torch.Tensor:
        """The pixels of concepts first..stop-1, in this tuple's order, as one view."""
        return self._order[self._bounds[first]: self._bounds[stop]]


def concept_pixel_groups(regions: torch.Tensor) -> tuple:
    """Each concept's pixels per row, for the gathered RBA path.

    regions: (B, R, N) bool. Returns, per row, a PixelGroups of R (count_i,) long pixel indices
    in ascending order, owner rule of concept_owner. Reads the group sizes on the host: ONE host
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
            groups.append(PixelGroups(order[row], bounds))
        result.append(tuple(groups))
    return result


def _blended_pixels(row_groups, members, present) -> torch.Tensor:
    """The pixels of concepts `present` (those of `members` with pixels; both ascending) in one
    (n,) tensor: a view where `members` are consecutive concepts of a PixelGroups (the others'
    sets are empty), else one concatenation."""
    if len(present) == 1:
        return row_groups[present[0]]
    if isinstance(row_groups, PixelGroups) and members[-1] - members[0] == len(members) - 1:
        return row_groups.span(members[0], members[-1] + 1)
    return torch.cat([row_groups[index] for index in present])


def _blended_tails(block: FoldedBlock, row_groups, present) -> torch.Tensor:
    """(n, e) query tails of _blended_pixels' pixels: concept i's tail for each of its pixels."""
    pieces = [block.concept_tails[index].expand(row_groups[index].numel(), -1) for index in present]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _rba_gathered(q_h, k_h, v_h, refs: ReferenceKV, groups, out) -> None:
    """Fast RBA on the concepts' own pixels only: they are gathered, blended in ONE fused call
    over the own keys and every reference (each pixel's query tail shuts out the references of
    other concepts, FoldedBlock.concept_tails) and written into out, which holds plain
    attention. Same result as _rba_fast, for the arithmetic of the concepts' areas instead of R
    whole images; the group sizes are host ints (concept_pixel_groups), so nothing here
    synchronises.

    q_h, k_h, v_h: (B, H, N, d); groups: concept_pixel_groups(regions); out: (B, N, H*d).
    """
    block = refs.folded(q_h)
    scale, heads, dim = refs.head_dim ** -0.5, q_h.shape[1], q_h.shape[-1]
    target = out if out.stride(-1) == 1 else out.contiguous()
    target_h = target.view(*target.shape[:-1], heads, dim)  # (B, N, H, d)
    # Concepts without a kept key leave their pixels plain: they are not blended at all.
    members = [index for index in range(refs.num_refs) if refs.num_kept(index)]
    for row, row_groups in enumerate(groups):
        present = [index for index in members if row_groups[index].numel()]
        if not present:
            continue
        pixels = _blended_pixels(row_groups, members, present)
        tails = _blended_tails(block, row_groups, present)
        q_ext = _extend_queries(q_h[row : row + 1, :, pixels], tails)
        own_kv = _own_block(k_h[row : row + 1], v_h[row : row + 1], block.zeros)
        blend = _joint_attention(q_ext, own_kv, block.kv, scale, dim)
        target_h[row].index_copy_(0, pixels, blend[0].transpose(0, 1).to(target.dtype))
    if target is not out:
        out.copy_(target)


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
                  groups=None, plain=None) -> torch.Tensor:
    """Region-grouped blend attention (late steps).

    q, k, v: (B, N, C) target rows; regions: (B, R, N) bool, concept i's pixels at this layer.
    Pixels owned by concept i (see concept_owner) attend to their own keys plus reference i's
    keys only (same bias rule); all other pixels get plain self-attention. When no pixel blends
    (no region, or no kept key in the owning references) the result is plain attention exactly.
    groups: concept_pixel_groups(regions), made once per grid; with it the fast path computes
    the blend for each concept's pixels only instead of for every pixel R times.
    plain: (B, N, C) these rows' plain self-attention (e.g. the host's own output for them); the
    result is written into it and it is returned, so pixels outside every region keep exactly
    the caller's values. None: plain_attention's, computed here.
    The fast path never synchronises with the host. Returns (B, N, C).
    """
    _check_refs(q, refs, heads)
    fast = _use_fast_path(impl)
    batch, tokens, _ = q.shape
    if tuple(regions.shape) != (batch, refs.num_refs, tokens):
        raise ValueError(f"regions must be {(batch, refs.num_refs, tokens)}, got {tuple(regions.shape)}")
    if groups is not None and (len(groups) != batch or any(len(row) != refs.num_refs for row in groups)):
        raise ValueError(f"groups must hold {refs.num_refs} pixel sets for each of {batch} rows")
    if not fast:
        result = _rba_materialised(q, k, v, refs, concept_owner(regions.to(device=q.device, dtype=torch.bool)), heads)
        return result if plain is None else plain.copy_(result)
    if plain is None:
        plain = plain_attention(q, k, v, heads)
    dtype = compute_dtype(q)
    q_h, k_h, v_h = (split_heads(t, heads, dtype) for t in (q, k, v))
    if groups is not None:
        _rba_gathered(q_h, k_h, v_h, refs, groups, plain)
        return plain
    blended = [index for index in range(refs.num_refs) if refs.num_kept(index)]
    if blended:
        owner = concept_owner(regions.to(device=q.device, dtype=torch.bool))
        _write_heads(plain, _rba_fast(q_h, k_h, v_h, refs, owner, split_heads(plain, heads, dtype), blended))
    return plain
