"""Attention replace patches that ComfyUI calls inside every patched transformer block.

They read the per-call context from extra_options (a copy of transformer_options), so a
model call without MagicFace context (another model, a reference pass of a different
patch) runs exactly the host's attention or the patch they wrap.
"""
import torch

from . import keys
from .concepts import _SharedOnCopy
from .host import host_attention
from .layers import layer_hw
from .run_state import AttentionRecord
from ..magicface_attn import concept_owner, head_mean_cross_probs, rba_attention, rsa_attention, smooth_propagate


def _grid_nearest(mask, hw):
    """(E, R, Hs, Ws) bool -> (E, R, h*w) bool with the floor(i*Hs/h) nearest rule."""
    h, w = hw
    hs, ws = mask.shape[-2:]
    rows = torch.div(torch.arange(h, device=mask.device) * hs, h, rounding_mode="floor")
    cols = torch.div(torch.arange(w, device=mask.device) * ws, w, rounding_mode="floor")
    return mask[..., rows[:, None], cols[None, :]].reshape(*mask.shape[:-2], h * w)


class SelfAttentionHook(_SharedOnCopy):
    """attn1 replace: RSA/RBA on injection layers, query/key capture on segmentation layers."""

    def __init__(self, layer, inject: bool, collect: bool, record: bool = False, previous=None):
        self.layer, self.inject, self.collect, self.previous = layer, inject, collect, previous
        self.record = record  # keep this layer's last query/keys for the attention-map preview

    def _plain(self, q, k, v, extra):
        if self.previous is not None:
            return self.previous(q, k, v, extra)
        return host_attention(q, k, v, extra["n_heads"], extra)

    def __call__(self, q, k, v, extra):
        call = extra.get(keys.CALL_CONTEXT_KEY)
        if call is None:
            return self._plain(q, k, v, extra)
        heads = extra["n_heads"]
        if call.mode == keys.MODE_CAPTURE:
            if self.inject:
                call.run.store_reference(self.layer, k, v, heads, call.latent_hw)
            return host_attention(q, k, v, heads, extra)
        if self.collect:
            call.pending_self[self.layer.key] = (q[call.seg_rows], k[call.seg_rows])
        if self.inject and call.stage is not None:
            out = self._inject(q, k, v, extra, call, heads)
            if out is not None:
                return out
        return self._plain(q, k, v, extra)

    def _inject(self, q, k, v, extra, call, heads):
        refs = call.run.reference_kv.get(self.layer.key)
        if refs is None or refs.total_kept == 0:
            return None  # every reference mask vanished at this resolution: plain attention, bit-exact
        rows = call.cond_rows
        if call.stage == keys.STAGE_RSA:
            injected = rsa_attention(q[rows], k[rows], v[rows], refs, heads)
        else:
            if call.regions is None:
                return None
            hw = layer_hw(call.latent_hw, self.layer.factor)
            regions = _grid_nearest(call.regions, hw)[call.cond_elements]
            if not bool(regions.any()):
                return None
            injected = rba_attention(q[rows], k[rows], v[rows], refs, regions, heads)
        if self.record:
            owner = concept_owner(regions[:1])[0] if call.stage == keys.STAGE_RBA else None
            call.run.attention_record = AttentionRecord(
                layer=self.layer, stage=call.stage, query=q[rows[0]], own_keys=k[rows[0]], refs=refs,
                heads=heads, hw=layer_hw(call.latent_hw, self.layer.factor), owner=owner)
        out = self._rest_plain(q, k, v, extra, rows, heads)
        out[rows] = injected.to(out.dtype)
        call.run.calls[(call.stage, self.layer.name)] += 1
        return out

    def _rest_plain(self, q, k, v, extra, rows, heads):
        if self.previous is not None:  # another node's patch sees the whole batch, as it expects
            return self.previous(q, k, v, extra)
        out = torch.empty_like(q)
        for start, stop in _plain_spans(extra.get("cond_or_uncond"), q.shape[0], rows):
            out[start:stop] = host_attention(q[start:stop], k[start:stop], v[start:stop], heads, extra)
        return out


def _plain_spans(cond_or_uncond, batch, rows):
    """Contiguous (start, stop) row spans that are not the target's cond branch.

    Read from the host's cond_or_uncond list, so no device mask (and no host sync) is needed;
    without that list the spans come from the cond row indices.
    """
    if cond_or_uncond:
        chunk = batch // len(cond_or_uncond)
        plain = [flag != keys.COND_FLAG for flag in cond_or_uncond for _ in range(chunk)]
    else:
        plain = [True] * batch
        for row in rows.tolist():
            plain[row] = False
    spans, start = [], None
    for row, is_plain in enumerate(plain + [False]):
        if is_plain and start is None:
            start = row
        elif not is_plain and start is not None:
            spans.append((start, row))
            start = None
    return spans


class CrossAttentionHook(_SharedOnCopy):
    """attn2 replace on segmentation layers: turns this block's attention into segmentation maps."""

    def __init__(self, layer, previous=None):
        self.layer, self.previous = layer, previous

    def __call__(self, q, k, v, extra):
        heads = extra["n_heads"]
        if self.previous is not None:
            out = self.previous(q, k, v, extra)
        else:
            out = host_attention(q, k, v, heads, extra)
        call = extra.get(keys.CALL_CONTEXT_KEY)
        if call is not None and call.mode == keys.MODE_TARGET:
            pending = call.pending_self.pop(self.layer.key, None)
            if pending is not None:
                rows = call.seg_rows
                cross = head_mean_cross_probs(q[rows], k[rows], heads)
                maps = smooth_propagate(pending[0], pending[1], cross, heads)
                call.maps.append((maps.float(), layer_hw(call.latent_hw, self.layer.factor)))
                call.run.calls[("segmentation", self.layer.name)] += 1
        return out
