"""MagicFace Concept Loader: one reference image + mask + prompt word(s), chained into a list."""
import logging
import re

import torch

from ..comfy_glue import keys
from ..comfy_glue.concepts import AutoMaskSettings, Concept, ConceptList
from ..comfy_glue.errors import MagicFaceInputError, reference_prompt_lacks_word
from .ranges import check_declared_ranges

log = logging.getLogger("MagicFace")
NODE = "MagicFace Concept Loader"
MAX_WEIGHT = 10.0
# Below this many pixels on its shorter side a reference has fewer than 8 latent pixels there
# (the VAE's stride is 8): it is enlarged many times to the reference size and its details blur.
MIN_REFERENCE_SIDE = 64


def reference_image(image: torch.Tensor, node: str) -> torch.Tensor:
    """IMAGE batch (B, H, W, C) -> one RGB image (H, W, 3); greyscale and RGBA are accepted."""
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        raise MagicFaceInputError(node, "image", f"expected an IMAGE (B, H, W, C), got shape {tuple(image.shape)}.",
                                  "connect a Load Image node (or any node that outputs IMAGE).")
    if image.shape[0] > 1:
        log.warning("[%s] the image input is a batch of %d; the first image is used.", node, image.shape[0])
    picture = image[0].float().cpu()
    if picture.shape[-1] == 1:
        picture = picture.expand(-1, -1, 3)
    if min(picture.shape[:2]) < MIN_REFERENCE_SIDE:
        log.warning("[%s] the reference image is %dx%d px: it is enlarged many times to the reference size "
                    "(512 px on SD1.x) and its details blur; use an image of at least %d px on each side.",
                    node, picture.shape[1], picture.shape[0], MIN_REFERENCE_SIDE)
    return picture[..., :3].clamp(0, 1)


def reference_mask(mask, image_hw, node: str) -> torch.Tensor:
    """MASK (B, H, W) or (H, W) or None -> (H, W) float at the image's size (resized if needed)."""
    if mask is None:
        return torch.ones(image_hw)
    mask = mask.float().cpu()
    while mask.dim() > 2:
        mask = mask[0]
    if tuple(mask.shape) != tuple(image_hw):
        log.info("[%s] mask %s resized to the image size %s.", node, tuple(mask.shape), tuple(image_hw))
        mask = torch.nn.functional.interpolate(mask[None, None], size=tuple(image_hw), mode="bilinear",
                                               align_corners=False)[0, 0]
    return mask.clamp(0, 1)


def checked_weight(weight: float, node: str) -> float:
    if not (0.0 <= weight <= MAX_WEIGHT):
        raise MagicFaceInputError(node, "weight", f"{weight} is outside 0..{MAX_WEIGHT}.",
                                  "use 1.2 to 4.0 (3.0 for a single face is a good start); 0 takes the reference out of "
                                  "the attention (its word still shapes the segmentation and semantic CFG).")
    return float(weight)


def mask_plan(mask, mask_source, words, prompt, node, settings):
    """AutoMaskSettings when the mask is to be estimated, else None; refuses a choice that
    would leave a connected mask unused, and a reference prompt the estimate cannot use."""
    if mask is not None and mask_source != keys.MASK_SOURCE_AUTO:
        raise MagicFaceInputError(node, "mask_source", f"'{mask_source}' ignores the connected mask.",
                                  "choose 'auto' to use the connected mask, or disconnect it.")
    if mask is not None or mask_source == keys.MASK_SOURCE_WHOLE:
        return None
    if not re.search(rf"(?<!\w){re.escape(words.lower())}(?!\w)", prompt.lower()):
        raise reference_prompt_lacks_word(node, prompt, words)
    return settings


def build_concept(image, mask, words, weight, reference_prompt, node, source,
                  mask_source=keys.MASK_SOURCE_AUTO, auto_settings=AutoMaskSettings()):
    words = words.strip()
    if not words:
        raise MagicFaceInputError(node, "words", "no concept word given.",
                                  "type the word of the target prompt that names this concept, e.g. 'man' or 'hat'.")
    picture = reference_image(image, node)
    prompt = reference_prompt.strip() or f"a {words}"
    auto = mask_plan(mask, mask_source, words, prompt, node, auto_settings)
    concept_mask = reference_mask(mask, picture.shape[:2], node)
    return Concept(image=picture, mask=concept_mask, words=words, weight=checked_weight(weight, node),
                   reference_prompt=prompt, source=source, auto_mask=auto, node=node)


def mask_source_inputs() -> dict:
    """The optional inputs that say where a concept's mask comes from (Loader and Folder)."""
    return {
        "mask_source": (list(keys.MASK_SOURCES), {
            "tooltip": "auto: the connected mask, or without one MagicFace estimates it from the reference's own "
                       "attention to its word; attention: always estimate; whole image: no mask."}),
        "auto_threshold": ("FLOAT", {"default": 0.5, "min": 0.05, "max": 0.95, "step": 0.05, "tooltip":
                                     "Estimate: how strongly the word must win a pixel. 0.5 = where it wins; "
                                     "higher = a tighter mask."}),
        "auto_grow": ("INT", {"default": 0, "min": -128, "max": 128,
                              "tooltip": "Estimate: grow (>0) or shrink (<0) the mask by this many pixels."}),
        "auto_feather": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 64.0, "step": 0.5,
                                   "tooltip": "Estimate: soften its edge over this many pixels."}),
    }


def auto_settings(node_class, node, auto_threshold, auto_grow, auto_feather) -> AutoMaskSettings:
    check_declared_ranges(node_class, node, auto_threshold=auto_threshold, auto_grow=auto_grow,
                          auto_feather=auto_feather)
    return AutoMaskSettings(float(auto_threshold), int(auto_grow), float(auto_feather))


class MagicFaceConceptLoader:
    CATEGORY = "MagicFace"
    FUNCTION = "load"
    RETURN_TYPES = (keys.CONCEPTS_TYPE,)
    RETURN_NAMES = ("concepts",)
    DESCRIPTION = "One MagicFace concept: a reference image, its mask, and the prompt word that names it."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Reference image of the concept (face, hair, outfit, hat...)."}),
                "words": ("STRING", {"default": "man", "tooltip": "Word(s) of the target prompt that name this concept."}),
                "weight": ("FLOAT", {"default": 3.0, "min": 0.0, "max": MAX_WEIGHT, "step": 0.1,
                                     "tooltip": "Attention bonus on the reference (logit +weight). 1.2-4.0; "
                                                "raise if the concept is ignored, lower if it is copied too literally. "
                                                "0 takes the reference out of the attention; its word still shapes "
                                                "the segmentation and semantic CFG."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Where the concept is in the reference image. Unconnected: "
                                  "estimated from the reference (see mask_source)."}),
                "reference_prompt": ("STRING", {"default": "", "tooltip": "Short prompt describing the reference "
                                                "image, e.g. 'a man'. Empty: 'a <words>'."}),
                "previous": (keys.CONCEPTS_TYPE, {"tooltip": "Concepts of earlier loaders, to chain several concepts."}),
                **mask_source_inputs(),
            },
        }

    def load(self, image, words, weight, mask=None, reference_prompt="", previous=None,
             mask_source=keys.MASK_SOURCE_AUTO, auto_threshold=0.5, auto_grow=0, auto_feather=0.0):
        settings = auto_settings(type(self), NODE, auto_threshold, auto_grow, auto_feather)
        concept = build_concept(image, mask, words, weight, reference_prompt, NODE, "image", mask_source, settings)
        return ((previous or ConceptList()).extended(concept),)
