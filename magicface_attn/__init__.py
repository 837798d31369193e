"""MagicFace attention core: RSA / RBA attention, segmentation and semantic CFG in pure torch.

Layouts: attention tensors are (B, N, C), C = heads*d head-major, N = h*w row-major (y*w + x).
This package imports nothing from ComfyUI.
"""
from .attention import (
    IMPLS,
    PixelGroups,
    concept_owner,
    concept_pixel_groups,
    pixel_groups_of_grids,
    plain_attention,
    rba_attention,
    rsa_attention,
)
from .constants import (
    CA_SCALE_FOREGROUND_THRESHOLD,
    CA_SCALE_MULTI_CONCEPT,
    CA_SCALE_SINGLE_CONCEPT,
    GAUSSIAN_KERNEL_SIZE,
    GAUSSIAN_SIGMA,
    MAX_GUIDANCE,
    NORM_EPS,
    RATE_CLAMP,
    RATE_EPS,
    REFERENCE_CFG,
    REFERENCE_INJECT_STEP,
    REFERENCE_MASK_ON_VALUE,
    REFERENCE_MASK_SIZE,
    REFERENCE_SEGMENTATION_DOWNSCALE,
    REFERENCE_STEPS,
    START_TOKEN,
)
from .auto_mask import WordMask, word_and_start_maps, word_mask
from .guidance import semantic_cfg, semantic_cfg_rate
from .masks import (LAYER_RESIZE_MODES, RESIZE_AREA, RESIZE_NEAREST, feather_mask, grow_mask, mask_to_layer,
                    reference_mode_mask, resize_nearest)
from .propagation import head_mean_cross_probs, propagate_cross_maps, propagate_with_probs
from .reference_kv import PackLayout, ReferenceKV, make_reference_kv, pack_layout
from .segmentation import Segmentation, segment
from .smoothing import gaussian_blur, gaussian_kernel
from .visualise import point_attention_to_references

__all__ = [
    "CA_SCALE_FOREGROUND_THRESHOLD", "CA_SCALE_MULTI_CONCEPT", "CA_SCALE_SINGLE_CONCEPT",
    "GAUSSIAN_KERNEL_SIZE", "GAUSSIAN_SIGMA", "IMPLS", "LAYER_RESIZE_MODES", "MAX_GUIDANCE", "NORM_EPS",
    "RESIZE_AREA", "RESIZE_NEAREST", "RATE_CLAMP", "RATE_EPS", "REFERENCE_CFG", "REFERENCE_INJECT_STEP",
    "REFERENCE_MASK_ON_VALUE",
    "REFERENCE_MASK_SIZE", "REFERENCE_SEGMENTATION_DOWNSCALE", "REFERENCE_STEPS", "START_TOKEN",
    "PackLayout", "PixelGroups", "ReferenceKV", "Segmentation", "WordMask", "concept_owner", "concept_pixel_groups",
    "feather_mask", "grow_mask", "word_and_start_maps", "word_mask",
    "gaussian_blur", "gaussian_kernel",
    "head_mean_cross_probs", "make_reference_kv", "mask_to_layer", "pack_layout", "pixel_groups_of_grids",
    "plain_attention",
    "point_attention_to_references",
    "propagate_cross_maps", "propagate_with_probs", "rba_attention", "reference_mode_mask", "resize_nearest",
    "rsa_attention", "segment", "semantic_cfg", "semantic_cfg_rate",
]
