"""The concepts that travel from the Concept Loaders to MagicFace Apply (MAGICFACE_CONCEPTS).

Immutable and shared on copy (shared_on_copy.py): reference images are never copied when a
LoRA or another patch clones the model.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from .shared_on_copy import SharedOnCopy


@dataclass(frozen=True)
class AutoMaskSettings:
    """How a concept without a mask gets one from its reference's attention (auto_mask.py):
    the word's share threshold (0.5 = the segmentation's argmax), then grow (pixels, negative
    shrinks) and feather (pixels) as the Concept Mask node does."""
    threshold: float = 0.5
    grow: int = 0
    feather: float = 0.0


@dataclass(frozen=True, eq=False)
class Concept(SharedOnCopy):
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
class ConceptList(SharedOnCopy):
    concepts: tuple = ()

    def extended(self, concept: Concept) -> "ConceptList":
        return ConceptList(self.concepts + (concept,))

    def __len__(self):
        return len(self.concepts)

    def __iter__(self):
        return iter(self.concepts)
