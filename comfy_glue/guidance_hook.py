"""Semantic-aware CFG as a sampler_cfg_function.

ComfyUI hands the function x - denoised for both branches; the per-pixel rate is a ratio of
norms, so it is the same in that space as in epsilon space. An existing cfg function of
another node is kept: it receives the rate-modulated cond, so both effects compose.
"""
import torch

from .concepts import _SharedOnCopy
from ..magicface_attn import semantic_cfg, semantic_cfg_rate


class SemanticGuidanceHook(_SharedOnCopy):
    def __init__(self, patch, previous=None):
        self.patch, self.previous = patch, previous

    def _fallback(self, args):
        if self.previous is not None:
            return self.previous(args)
        return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]

    def __call__(self, args):
        scale = float(args["cond_scale"])
        run = self.patch.active_run()
        sigma = float(args["sigma"].reshape(-1)[0]) if torch.is_tensor(args["sigma"]) else float(args["sigma"])
        segmentation = run.segmentation_at(sigma) if run is not None else None
        cond, uncond = args["cond"], args["uncond"]
        if segmentation is None or scale == 1.0 or len(segmentation) != cond.shape[0]:
            return self._fallback(args)
        token_regions = torch.stack([s.token_regions for s in segmentation]).to(cond.device)
        fore = torch.stack([s.fore for s in segmentation]).to(cond.device)
        rate = semantic_cfg_rate(uncond, cond, token_regions, fore, scale).to(cond.dtype)
        run.calls[("guidance", "step")] += 1
        if self.previous is not None:
            return self.previous({**args, "cond": uncond + rate * (cond - uncond)})
        return semantic_cfg(uncond, cond, rate, scale)
