"""Everything MagicFace Apply decides before sampling, frozen into one immutable plan."""
from dataclasses import dataclass
from typing import Optional

import torch

from . import keys
from .shared_on_copy import SharedOnCopy


@dataclass(frozen=True, eq=False)
class MagicFacePlan(SharedOnCopy):
    """Inputs of every run of one patched model.

    reference_latents: (R, C_lat, h, w) clean reference latents in the model's latent space.
    reference_masks: (R, Hm, Wm) float masks ("area" mode) or (R, 128, 128) bool (reference mode).
    reference_context: (R, T, C_ctx) text context of each reference prompt.
    reference_pooled: (R, C_pool) pooled text embedding, for models with adm conditioning.
    reference_concat: (R, C_extra, h, w) the references' extra UNet input channels (c_concat) on
        models that take them (inpainting checkpoints), else None.
    prompt_context: (T, C) the target prompt's text context as Apply encoded it, to check that the
        sampler's positive prompt is that prompt.
    concept_tokens: per concept, its context token indices in the target prompt.
    reference_images: the references as encoded (R, S, S, 3), kept for the preview nodes.
    sigma_start > sigma_switch > sigma_end: the effect runs while sigma_end <= sigma <= sigma_start;
    RSA while sigma > sigma_switch, RBA after.
    reference_every: the references' features are recomputed at one step in this many and reused
    in between (1: every step, as the reference code; more is faster and approximate).
    reference_noise: keys.REFERENCE_NOISE_SOURCES, where the references' per-step noise comes from.
    """
    injection_layers: tuple
    segmentation_layers: tuple
    reference_latents: torch.Tensor
    reference_masks: torch.Tensor
    mask_mode: str
    weights: tuple
    reference_context: torch.Tensor
    reference_pooled: Optional[torch.Tensor]
    concept_tokens: tuple
    concept_names: tuple
    ca_scale: float
    semantic_cfg: bool
    sigma_start: float
    sigma_switch: float
    sigma_end: float
    seed: int
    reference_images: Optional[torch.Tensor] = None   # (R, S, S, 3) as encoded, for previews
    reference_every: int = 1
    reference_concat: Optional[torch.Tensor] = None
    prompt_context: Optional[torch.Tensor] = None
    reference_noise: str = keys.REFERENCE_NOISE_PER_LEVEL

    @property
    def concept_count(self) -> int:
        return len(self.weights)

    def stage_at(self, sigma: float):
        """'rsa', 'rba' or None (outside the effect window)."""
        if sigma > self.sigma_start * (1 + 1e-6) or sigma < self.sigma_end * (1 - 1e-6):
            return None
        return keys.STAGE_RSA if sigma > self.sigma_switch else keys.STAGE_RBA
