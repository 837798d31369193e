"""Semantic-aware CFG: a sampler_cfg_function, and a post-CFG backstop for when another node
replaces that function after MagicFace Apply.

ComfyUI hands a cfg function x - denoised for both branches; the per-pixel rate is a ratio of
norms, so it is the same in that space as in the denoised one. An existing cfg function of
another node is kept: it receives the rate-modulated cond, so both effects compose.

Nodes applied after MagicFace Apply (RescaleCFG, PerpNeg, custom CFG nodes) set their own cfg
function without keeping the one before. Post-CFG functions are a list every node appends to,
so the backstop there still runs: at an evaluation where the cfg hook did not run, it adds the
semantic modulation cond_scale * (rate - 1) * (cond - uncond) to that node's result (with plain
CFG in its place this is semantic CFG exactly).
"""
import logging

import torch

from . import run_ledger
from .batch_rows import stack_elements
from .shared_on_copy import SharedOnCopy
from ..magicface_attn import semantic_cfg, semantic_cfg_rate

log = logging.getLogger("MagicFace")


def _sigma_value(sigma) -> float:
    return float(sigma.reshape(-1)[0]) if torch.is_tensor(sigma) else float(sigma)


def _step_segmentation(run, sigma, rows: int, scale: float):
    """The segmentation semantic CFG uses at this evaluation, or None where it leaves CFG plain."""
    if run is None or scale == 1.0:
        return None
    segmentation = run.segmentation.at(_sigma_value(sigma))
    return segmentation if segmentation is not None and len(segmentation) == rows else None


def _rate(run, segmentation, uncond, cond, scale: float):
    token_regions = stack_elements([s.token_regions for s in segmentation]).to(cond.device)
    fore = stack_elements([s.fore for s in segmentation]).to(cond.device)
    return semantic_cfg_rate(uncond, cond, token_regions, fore, scale, run.device_constants).to(cond.dtype)


class SemanticGuidanceHook(SharedOnCopy):
    def __init__(self, patch, previous=None):
        self.patch, self.previous = patch, previous

    def _fallback(self, args):
        if self.previous is not None:
            return self.previous(args)
        return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]

    def __call__(self, args):
        scale = float(args["cond_scale"])
        run = self.patch.active_run()
        if run is not None:
            run.note_cfg_hook_ran()
        cond, uncond = args["cond"], args["uncond"]
        segmentation = _step_segmentation(run, args["sigma"], cond.shape[0], scale)
        if segmentation is None:
            return self._fallback(args)
        rate = _rate(run, segmentation, uncond, cond, scale)
        run.ledger.count(run_ledger.GUIDANCE, "step")
        if self.previous is not None:
            return self.previous({**args, "cond": uncond + rate * (cond - uncond)})
        return semantic_cfg(uncond, cond, rate, scale)


class SemanticGuidanceBackstop(SharedOnCopy):
    """sampler_post_cfg_function; see the module docstring."""

    def __init__(self, patch):
        self.patch = patch

    def __call__(self, args):
        denoised = args["denoised"]
        run = self.patch.active_run()
        if run is None:
            return denoised
        ran = run.take_cfg_hook_ran()
        uncond = args.get("uncond_denoised")
        if ran or uncond is None:
            return denoised
        if "cond_scale" not in args:  # the 2024 host does not pass the CFG scale here
            if not run.ledger.counted(run_ledger.GUIDANCE, "replaced"):
                log.warning("[MagicFace Apply] a node applied after MagicFace Apply replaced the CFG function, "
                            "so semantic CFG is off in this run; apply that node before MagicFace Apply.")
            run.ledger.count(run_ledger.GUIDANCE, "replaced")
            return denoised
        scale = float(args["cond_scale"])
        cond = args["cond_denoised"]
        segmentation = _step_segmentation(run, args["sigma"], cond.shape[0], scale)
        if segmentation is None:
            return denoised
        rate = _rate(run, segmentation, uncond, cond, scale)
        run.ledger.count(run_ledger.GUIDANCE, "after another cfg function")
        return denoised + (cond - uncond) * ((rate - 1) * scale)
