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
    seg: object                            # slice or long tensor: the rows the segmentation reads, see seg_layout
    seg_layout: str                        # SEG_PAIRS [uncond_0, cond_0, uncond_1, ...], SEG_COND or SEG_UNCOND rows
    refs: Optional[slice]                  # reference rows appended by batch coupling
    total: int                             # rows of the call's batch, reference rows included


# What a call's segmentation rows hold. A step's cond and uncond rows come in one call unless
# the host splits the batch (to fit memory): then one call holds each half, or there is no
# uncond half at all (cfg 1).
SEG_PAIRS, SEG_COND, SEG_UNCOND = "uncond and cond", "cond", "uncond"


def _selector(indices, device):
    if indices == list(range(indices[0], indices[0] + len(indices))):
        return slice(indices[0], indices[0] + len(indices))
    return torch.tensor(indices, dtype=torch.long, device=device)


def row_flags(cond_or_uncond, chunk: int) -> list:
    """The cond_or_uncond flag of every row of a call (each flag stands for a chunk of rows)."""
    return [flag for flag in cond_or_uncond for _ in range(chunk)]


def batch_rows(cond_or_uncond, chunk: int, ref_count: int, device) -> BatchRows:
    """The row layout of a call whose cond_or_uncond holds at least one cond chunk."""
    flags = row_flags(cond_or_uncond, chunk)
    cond = [row for row, flag in enumerate(flags) if flag == keys.COND_FLAG]
    uncond = [row for row, flag in enumerate(flags) if flag == keys.UNCOND_FLAG]
    has_uncond = bool(uncond)
    seg = [row for pair in zip(uncond[:chunk], cond[:chunk]) for row in pair] if has_uncond else cond[:chunk]
    layout = SEG_PAIRS if has_uncond else SEG_COND
    elements = None
    if len(cond) != chunk:
        elements = torch.arange(len(cond), device=device) % chunk
    target = len(flags)
    refs = slice(target, target + ref_count) if ref_count else None
    return BatchRows(cond=_selector(cond, device), cond_elements=elements,
                     seg=_selector(seg, device), seg_layout=layout,
                     refs=refs, total=target + ref_count)


def uncond_half_rows(cond_or_uncond, chunk: int, device) -> BatchRows:
    """The row layout of a call with uncond chunks and no cond one (the host split the step's
    batch): every row stays plain, the segmentation reads the first uncond chunk."""
    flags = row_flags(cond_or_uncond, chunk)
    uncond = [row for row, flag in enumerate(flags) if flag == keys.UNCOND_FLAG][:chunk]
    return BatchRows(cond=slice(0, 0), cond_elements=None, seg=_selector(uncond, device), seg_layout=SEG_UNCOND,
                     refs=None, total=len(flags))


def stack_elements(tensors) -> torch.Tensor:
    """torch.stack of per-batch-element tensors; a view when there is one (the usual batch of
    one image), which saves a copy per step."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)
