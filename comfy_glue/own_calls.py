"""Which model calls were MagicFace's own at each noise level, to tell other nodes' extra passes.

Self-Attention and Perturbed-Attention Guidance call the model again after CFG at a noise
level whose own call already ran; the call pipeline asks this record what such a call is.
"""
import torch

from . import keys
from .noise_levels import same_sigma
from .segmentation_history import KEPT_SEGMENTATIONS


class OwnCalls:
    def __init__(self, rows=()):
        self._rows = list(rows)         # [(sigma, cond_or_uncond of the call that segmented it)]
        self._positive_context = None   # (T, C) text context of the last own call's first cond row

    @property
    def rows(self) -> tuple:
        return tuple(self._rows)

    def note(self, sigma: float, cond_or_uncond, context, chunk: int):
        """After a call that made this noise level's segmentation: its rows, and its positive
        prompt (a view of the call's context, kept until the next own call)."""
        self._rows = [(s, rows) for s, rows in self._rows[-KEPT_SEGMENTATIONS:]
                      if not same_sigma(s, sigma)] + [(sigma, tuple(cond_or_uncond))]
        self._positive_context = context[cond_or_uncond.index(keys.COND_FLAG) * chunk]

    def is_extra_pass(self, sigma: float, cond_or_uncond) -> bool:
        """Whether a call is another node's extra pass at a noise level whose own call already
        ran: it has other rows than that call. A repeat with the same rows (heun evaluating the
        same noise level again) is a call of its own and makes the segmentation anew."""
        for s, rows in reversed(self._rows):
            if same_sigma(s, sigma):
                return rows != tuple(cond_or_uncond)
        return False

    def carries_positive_prompt(self, context) -> bool:
        """Whether the first row's text context is the last own call's positive prompt: true for
        Perturbed-Attention Guidance's pass, false for Self-Attention Guidance's (the negative
        prompt in the cond slot) and the 2024 PerpNeg node's (the empty prompt). One host sync,
        on extra passes only; contexts of different lengths are compared over the shorter (the
        host repeats shorter ones)."""
        if self._positive_context is None:
            return False
        tokens = min(context.shape[1], self._positive_context.shape[0])
        return bool(torch.equal(context[0, :tokens], self._positive_context[:tokens]))
