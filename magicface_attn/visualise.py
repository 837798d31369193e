"""Where one query pixel looks in each reference: the reference code's attention-map view.

Pure torch, materialised for a single query (cheap), so it states the exact probabilities
that RSA (joint softmax over own + all references) or RBA (own + one reference) used.
"""
import torch

from .reference_kv import ReferenceKV


def point_attention_to_references(q_point, k_own, refs: ReferenceKV, heads: int, only_reference=None):
    """Head-averaged attention of one query over every reference's keys.

    q_point: (C,) one query (C = heads*d, head-major); k_own: (N, C) the image's own keys.
    only_reference: None for RSA's joint softmax over own + all references, or the index i of
    the reference RBA pairs with the pixel. Returns (R, M) probabilities (0 where a key is
    excluded or its reference is not attended).
    """
    d = q_point.shape[-1] // heads
    scale = d ** -0.5
    q = q_point.float().reshape(heads, 1, d)
    own = (q @ k_own.float().reshape(-1, heads, d).transpose(0, 1).transpose(1, 2)) * scale  # (heads, 1, N)
    blocks, included = [own[:, 0]], []
    for index in range(refs.num_refs):
        if only_reference is not None and index != only_reference:
            continue
        keys = refs.keys[index].float().reshape(-1, heads, d).transpose(0, 1)  # (heads, M, d)
        logits = (keys @ q.transpose(1, 2))[..., 0] * scale + refs.dense_bias(index, torch.float32)
        blocks.append(logits)
        included.append(index)
    probs = torch.softmax(torch.cat(blocks, dim=-1), dim=-1).mean(dim=0)  # (N + sum M,)
    tokens = k_own.shape[0]
    out = torch.zeros(refs.num_refs, refs.keys.shape[1])
    for position, index in enumerate(included):
        start = tokens + position * refs.keys.shape[1]
        out[index] = probs[start:start + refs.keys.shape[1]].cpu()
    return out
