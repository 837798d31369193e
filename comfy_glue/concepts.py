"""The values that travel between MagicFace nodes on custom socket types.

They are immutable and return themselves from __deepcopy__: ComfyUI deep-copies
model_options on every ModelPatcher.clone(), and reference images must not be copied
each time a LoRA or another patch clones the model.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from . import keys
from ..magicface_attn import CA_SCALE_MULTI_CONCEPT, CA_SCALE_SINGLE_CONCEPT


class _SharedOnCopy:
    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True)
class AutoMaskSettings:
    """How a concept without a mask gets one from its reference's attention (auto_mask.py):
    the word's share threshold (0.5 = the segmentation's argmax), then grow (pixels, negative
    shrinks) and feather (pixels) as the Concept Mask node does."""
    threshold: float = 0.5
    grow: int = 0
    feather: float = 0.0


@dataclass(frozen=True, eq=False)
class Concept(_SharedOnCopy):
    """One reference: image (H, W, 3) float in [0, 1] and mask (H, W) float in [0, 1], CPU.

    auto_mask: set when the mask is to be estimated by MagicFace Apply; mask is then the whole
    image, which reference mode (the published code's rules) keeps. node: the node that made
    it, named in its errors.
    """
    image: torch.Tensor
    mask: torch.Tensor
    words: str
    weight: float
    reference_prompt: str
    source: str = "image"
    auto_mask: Optional[AutoMaskSettings] = None
    node: str = "MagicFace Concept Loader"

    @property
    def mask_is_empty(self) -> bool:
        return not bool((self.mask > 0.5).any())


@dataclass(frozen=True, eq=False)
class ConceptList(_SharedOnCopy):
    concepts: tuple = ()

    def extended(self, concept: Concept) -> "ConceptList":
        return ConceptList(self.concepts + (concept,))

    def __len__(self):
        return len(self.concepts)

    def __iter__(self):
        return iter(self.concepts)


@dataclass(frozen=True)
class StageSchedule:
    """When and where RSA and RBA run. Fractions are of the sampling schedule (0 = first step).

    The default switch 0.42 puts the reference code's switch (RSA on steps 0..20 of 50,
    RBA from step 21) at the same noise level: ComfyUI converts fractions to sigmas with
    the model's own model_sampling.percent_to_sigma.
    """
    switch_at: float = 0.42
    start_at: float = 0.0
    end_at: float = 1.0
    layers: str = keys.LAYER_PRESET_PAPER
    custom_layers: str = ""
    ca_scale: float = 0.0          # 0 = automatic: 0.9 for one concept, 0.6 for several (reference advice)
    semantic_cfg: bool = True
    mask_mode: str = keys.MASK_MODE_AREA
    speed: str = keys.SPEED_EXACT
    reference_every: int = keys.REFERENCE_EVERY_FROM_SPEED  # steps between fresh reference features
    segmentation_layers: str = keys.SEGMENTATION_FROM_SPEED

    def levers(self) -> tuple:
        """(reference_every, segmentation layer set): the speed preset's, each unless set."""
        every, layer_set = keys.SPEED_LEVERS[self.speed]
        if self.reference_every != keys.REFERENCE_EVERY_FROM_SPEED:
            every = int(self.reference_every)
        if self.segmentation_layers != keys.SEGMENTATION_FROM_SPEED:
            layer_set = self.segmentation_layers
        return every, layer_set

    def resolved_ca_scale(self, concept_count: int) -> float:
        if self.ca_scale > 0:
            return float(self.ca_scale)
        return CA_SCALE_SINGLE_CONCEPT if concept_count == 1 else CA_SCALE_MULTI_CONCEPT
