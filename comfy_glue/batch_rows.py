"""Where each kind of row sits in the batch of one model call.

ComfyUI batches cond and uncond chunks of equal size and lists their order in cond_or_uncond;
batch coupling appends the reference rows after them. The hooks index q/k/v with these
selectors at every patched layer, so they are built once per run and batch layout: Python
slices where the rows are contiguous (a view, no index tensor, no host-to-device copy).
"""
from dataclasses import dataclass
from typing import Optional

import torch

from . import keys


@dataclass(frozen=True)
class BatchRows:
    cond: object                           # slice or (n,) long tensor: the target's cond rows
    cond_elements: Optional[torch.Tensor]  # (n,) batch element of each cond row; None: 0..n-1 in order
    seg: object                            # slice or long tensor: [uncond_0, cond_0, uncond_1, ...] or cond rows
    seg_has_uncond: bool
    plain_spans: tuple                     # ((start, stop), ...) rows with plain attention (uncond, references)
    refs: Optional[slice]                  # reference rows appended by batch coupling
    total: int                             # rows of the call's batch, reference rows included


def _selector(indices, device):
    if indices == list(range(indices[0], indices[0] + len(indices))):
        return slice(indices[0], indices[0] + len(indices))
    return torch.tensor(indices, dtype=torch.long, device=device)


def _spans(is_plain):
    spans, start = [], None
    for row, plain in enumerate(list(is_plain) + [False]):
        if plain and start is None:
            start = row
        elif not plain and start is not None:
            spans.append((start, row))
            start = None
    return tuple(spans)


def batch_rows(cond_or_uncond, chunk: int, ref_count: int, device) -> BatchRows:
    """The row layout of a call whose cond_or_uncond holds at least one cond chunk."""
    flags = [flag for flag in cond_or_uncond for _ in range(chunk)]
    cond = [row for row, flag in enumerate(flags) if flag == keys.COND_FLAG]
    uncond = [row for row, flag in enumerate(flags) if flag == keys.UNCOND_FLAG]
    has_uncond = bool(uncond)
    seg = [row for pair in zip(uncond[:chunk], cond[:chunk]) for row in pair] if has_uncond else cond[:chunk]
    elements = None
    if len(cond) != chunk:
        elements = torch.arange(len(cond), device=device) % chunk
    target = len(flags)
    refs = slice(target, target + ref_count) if ref_count else None
    return BatchRows(cond=_selector(cond, device), cond_elements=elements,
                     seg=_selector(seg, device), seg_has_uncond=has_uncond,
                     plain_spans=_spans([flag != keys.COND_FLAG for flag in flags] + [True] * ref_count),
                     refs=refs, total=target + ref_count)
