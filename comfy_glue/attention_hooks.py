"""Attention replace patches that ComfyUI calls inside every patched transformer block.

They read the per-call context from extra_options (a copy of transformer_options), so a
model call without MagicFace context (another model, a reference pass of a different
patch) runs exactly the host's attention or the patch they wrap.
"""
import copy

import torch

from . import keys, run_ledger
from .call_context import AttentionRecord
from .errors import MagicFaceInputError
from .host import host_attention
from .layers import token_grid
from .shared_on_copy import SharedOnCopy
from ..magicface_attn import (concept_owner, make_reference_kv, pixel_groups_of_grids, rba_attention, resize_nearest,
                              rsa_attention)


_FOREIGN_TOKENS_FIX = ("remove HyperTile or Token Merging (ToMe) from the model that MagicFace patches: MagicFace "
                      "needs one attention token per image pixel to find where each concept forms.")


def pixel_grid(call, layer, q, k):
    """(h, w) grid of this layer's tokens in this target call.

    Another node's attn1_patch runs before this hook and may have changed the tokens: a
    resized raster (Kohya Deep Shrink) still maps to pixels, tiles (HyperTile) or merged
    queries (ToMe) do not, and then the user gets told which node to take out.
    """
    problem = None
    if q.shape[0] != call.rows.total:
        problem = f"the self-attention at {layer.name} has {q.shape[0]} rows for a batch of {call.rows.total}: " \
                  "another node splits it into tiles."
    elif q.shape[1] != k.shape[1]:
        problem = f"the self-attention at {layer.name} has {q.shape[1]} queries for {k.shape[1]} keys: " \
                  "another node merges its tokens."
    else:
        hw = token_grid(call.latent_hw, layer.factor, q.shape[1])
        if hw is not None:
            return hw
        problem = f"the self-attention at {layer.name} sees {q.shape[1]} tokens, which fit no grid of the " \
                  f"{call.latent_hw[0]}x{call.latent_hw[1]} latent: another node rearranges them."
    raise MagicFaceInputError("MagicFace Apply", "model", problem, _FOREIGN_TOKENS_FIX)


def prepare_rba_regions(call, grids):
    """Concept regions and their pixel groups at each injection grid, before the UNet runs: the
    groups' sizes are read on the host (one sync for all grids) while the device has little queued.

    call.regions: (batch elements, R, Hs, Ws) bool. Fills call.layer_regions[(h, w)] with
    (cond rows, R, h*w) bool and call.layer_groups[(h, w)] with concept_pixel_groups of it.
    """
    grids = list(grids)
    for hw in grids:
        regions = resize_nearest(call.regions, *hw, call.run.device_constants).flatten(-2)
        if call.rows.cond_elements is not None:
            regions = regions[call.rows.cond_elements]
        call.layer_regions[hw] = regions
    groups = pixel_groups_of_grids([call.layer_regions[hw] for hw in grids])
    call.layer_groups.update(zip(grids, groups))


def _inner(extra):
    return {**extra, keys.INNER_ATTENTION_KEY: True}


class SelfAttentionHook(SharedOnCopy):
    """attn1 replace: RSA/RBA on injection layers, query/key capture on segmentation layers.

    owner: the MagicFacePatch that installed it; previous: the replace it wraps (another node's).
    """

    def __init__(self, layer, inject: bool, collect: bool, record: bool = False, previous=None, owner=None):
        self.layer, self.inject, self.collect, self.previous = layer, inject, collect, previous
        self.record = record  # keep this layer's last query/keys for the attention-map preview
        self.owner = owner

    def around(self, foreign):
        """This hook wrapping `foreign`, a replace another node set at this layer after MagicFace."""
        return SelfAttentionHook(self.layer, self.inject, self.collect, self.record, previous=foreign, owner=self.owner)

    def _plain(self, q, k, v, extra):
        if self.previous is not None:
            return self.previous(q, k, v, _inner(extra))
        return host_attention(q, k, v, extra["n_heads"], extra)

    def __call__(self, q, k, v, extra):
        call = extra.get(keys.CALL_CONTEXT_KEY)
        if call is None or extra.get(keys.INNER_ATTENTION_KEY):
            return self._plain(q, k, v, extra)
        heads = extra["n_heads"]
        if call.mode == keys.MODE_CAPTURE:
            if self.inject:
                self._store_references(call, k, v, heads, box=None)
            return host_attention(q, k, v, heads, extra)
        rows = call.rows
        hw = pixel_grid(call, self.layer, q, k)
        if self.collect and call.segment:
            call.pending_self[self.layer.key] = (q[rows.seg], k[rows.seg], hw)
        if self.inject and rows.refs is not None:  # batch coupling: the references ride in this batch
            self._store_references(call, k[rows.refs], v[rows.refs], heads, box=call.letterbox)
        out = self._plain(q, k, v, extra)
        if self.inject and call.stage is not None:
            self._inject(out, q, k, v, call, heads, hw)
        return out

    def _store_references(self, call, k, v, heads, box):
        """The references' keys/values (R, N, C) of this layer, masked and weighted, into the
        run's store; box: their Letterbox in the call's frame (None: they fill it)."""
        store = call.run.references
        masks = store.layer_masks(self.layer, call.latent_hw, box, k.device)
        if masks.grid[0] * masks.grid[1] != k.shape[1]:
            raise RuntimeError(f"MagicFace: reference tokens {k.shape[1]} do not match grid {masks.grid} "
                               f"at {self.layer.name}")
        kv = make_reference_kv(k, v, masks.masks, call.run.plan.weights, heads, layout=masks.layout)
        store.put(self.layer.key, kv, masks)

    def _inject(self, out, q, k, v, call, heads, hw):
        """RSA/RBA written into the cond rows of `out`, the whole batch's plain attention (the
        host's or the wrapped node's): the other rows keep it, and no row is computed twice
        apart from RSA's cond rows."""
        refs = call.run.references.kv(self.layer.key)
        if refs is None or refs.total_kept == 0:
            return  # every reference mask vanished at this resolution: plain attention, bit-exact
        rows = call.rows.cond
        if call.stage == keys.STAGE_RBA and call.regions is None:
            return
        target = out[rows]  # a view of out when the cond rows are contiguous
        regions = None
        if call.stage == keys.STAGE_RSA:
            rsa_attention(q[rows], k[rows], v[rows], refs, heads, out=target)
        else:
            if hw not in call.layer_regions:  # a grid resized by another node: one host sync, here
                prepare_rba_regions(call, [hw])
            regions = call.layer_regions[hw]
            rba_attention(q[rows], k[rows], v[rows], refs, regions, heads, groups=call.layer_groups[hw], plain=target)
        if not isinstance(rows, slice):
            out[rows] = target
        if self.record:
            owner = concept_owner(regions[:1])[0] if regions is not None else None
            ref_grid, ref_window = call.run.references.window(self.layer.key)
            call.run.keep_attention_record(AttentionRecord(
                layer=self.layer, stage=call.stage, query=q[rows][0], own_keys=k[rows][0], refs=refs,
                heads=heads, hw=hw, ref_grid=ref_grid, ref_window=ref_window, owner=owner))
        call.run.ledger.count(call.stage, self.layer.name)


class CrossAttentionHook:
    """attn2 replace on segmentation layers: turns this block's attention into segmentation maps.

    It also takes part in the chaining protocol of IPAdapter-style nodes (IPAdapter, InstantID,
    PuLID): applied after MagicFace, they find this hook at a layer and add() their callback,
    whose result is added to the attention output while the noise level lies within its
    sigma_start..sigma_end. Each model clone gets its own copy, so a callback added on one clone
    never reaches the model it was cloned from: hosts that deep-copy model_options on clone()
    call __deepcopy__; on hosts that share the objects, MagicFacePatch's clone callback swaps
    in a detached() copy.
    """

    def __init__(self, layer, previous=None, owner=None, added=()):
        self.layer, self.previous, self.owner = layer, previous, owner
        self.added = list(added)  # [(callback, kwargs)] of add()

    def __deepcopy__(self, memo):
        return CrossAttentionHook(self.layer, copy.deepcopy(self.previous, memo), self.owner, self.added)

    def detached(self):
        """A copy whose add() no longer reaches this hook (the wrapped replace stays shared, as
        the host shares it between clones)."""
        return CrossAttentionHook(self.layer, self.previous, self.owner, self.added)

    def around(self, foreign):
        """This hook wrapping `foreign`, a replace another node set at this layer after MagicFace
        (callbacks added to this hook stay with it: `foreign` calls it, or meant to replace it)."""
        return CrossAttentionHook(self.layer, foreign, self.owner)

    def add(self, callback, **kwargs):
        self.added.append((callback, kwargs))

    def _added(self, out, q, k, v, extra, call):
        sigma = call.sigma if call is not None else None  # a host float: no device read per layer
        if sigma is None and torch.is_tensor(extra.get("sigmas")):
            sigma = float(extra["sigmas"].reshape(-1)[0])
        for callback, kwargs in self.added:
            low, high = kwargs.get("sigma_end", -float("inf")), kwargs.get("sigma_start", float("inf"))
            if sigma is None or low <= sigma <= high:
                out = out + callback(out, q, k, v, extra, **kwargs)
        return out

    def __call__(self, q, k, v, extra):
        heads = extra["n_heads"]
        call = extra.get(keys.CALL_CONTEXT_KEY)
        if self.previous is not None:
            out = self.previous(q, k, v, _inner(extra))
        else:
            out = host_attention(q, k, v, heads, extra)
        if self.added:
            out = self._added(out, q, k, v, extra, call)
        if extra.get(keys.INNER_ATTENTION_KEY):
            return out
        if call is not None and call.mode == keys.MODE_TARGET and call.segment:
            pending = call.pending_self.pop(self.layer.key, None)
            if pending is not None:
                q_self, k_self, hw = pending
                rows = call.rows.seg
                call.propagation.add(q_self, k_self, q[rows], k[rows], heads, hw)
                call.run.ledger.count(run_ledger.SEGMENTATION, self.layer.name)
        return out
