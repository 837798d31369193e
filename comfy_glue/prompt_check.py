"""Whether the sampler passes MagicFace Apply's own prompt, checked once per run.

MagicFace acts on the concept words' token positions of the prompt Apply encoded; a sampler fed
another prompt would have it act on whatever tokens sit there.
"""
import logging

import torch

from . import keys, run_ledger
from .batch_rows import row_flags
from .errors import MagicFaceInputError

log = logging.getLogger("MagicFace")


class PromptCheck:
    def __init__(self, plan, ledger):
        self.plan, self.ledger = plan, ledger
        self._done = False

    def check(self, context, cond_or_uncond, chunk: int):
        """Whether the call's cond rows carry Apply's prompt at the concept words' tokens. Warns
        where none does (e.g. a separate CLIP Text Encode with another prompt). Stops where only
        rows of another slot do (DualCFGGuider passes the positive prompt last): MagicFace would
        act on the negative. A few host syncs, at the first call of a run only."""
        if self._done or self.plan.prompt_context is None:
            return
        self._done = True
        positions = [t for group in self.plan.concept_tokens for t in group if t < context.shape[1]]
        expected = self.plan.prompt_context[positions].to(context.device, context.dtype)
        matching = {flag for row, flag in enumerate(row_flags(cond_or_uncond, chunk))
                    if torch.equal(context[row, positions], expected)}
        if keys.COND_FLAG in matching:
            return
        if matching:
            raise MagicFaceInputError(
                "MagicFace Apply", "positive", "the sampler passes MagicFace Apply's prompt in another slot than a CFG "
                "sampler's positive one (as DualCFGGuider does), so MagicFace would act on another prompt.",
                "sample with KSampler, or SamplerCustom(Advanced) with CFGGuider, BasicGuider or PerpNegGuider.")
        self.ledger.count(run_ledger.PROMPT, "not MagicFace Apply's")
        log.warning("[MagicFace Apply] the sampler's positive prompt differs from MagicFace Apply's prompt at the "
                    "concept words (%s), so MagicFace may act on other words. Fix: connect MagicFace Apply's "
                    "'positive' output to the sampler (through nodes that keep the text, such as Apply ControlNet); "
                    "ignore this if the text was changed on purpose (e.g. Conditioning Average).",
                    ", ".join(self.plan.concept_names))
