"""MagicFace Concept Mask: whatever mask a user has -> a clean binary concept mask + preview."""
import torch
import torch.nn.functional as F

from ..comfy_glue.errors import MagicFaceInputError
from .ranges import check_declared_ranges
from ..magicface_attn import feather_mask, grow_mask

NODE = "MagicFace Concept Mask"
REFERENCE_THRESHOLD = "reference (==255)"
PREVIEW_TINT = torch.tensor([1.0, 0.2, 0.2])


def _as_batch(mask):
    return mask if mask.dim() == 3 else mask[None]


def _luminance(image):
    if image.shape[-1] == 4:  # an alpha channel is the mask
        return image[..., 3]
    return image[..., :3].mean(dim=-1)


class MagicFaceConceptMask:
    CATEGORY = "MagicFace"
    FUNCTION = "make_mask"
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "preview")
    DESCRIPTION = "Threshold, grow/shrink, feather or invert a mask (MASK, greyscale/JPEG image or alpha channel)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Pixels above this are the concept. 0.5 suits soft JPEG masks."}),
                "threshold_mode": (["value", REFERENCE_THRESHOLD],
                                   {"tooltip": "'reference' keeps only pure white, like the reference code."}),
                "grow": ("INT", {"default": 0, "min": -128, "max": 128,
                                 "tooltip": "Grow (>0) or shrink (<0) the mask by this many pixels."}),
                "feather": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 64.0, "step": 0.5,
                                      "tooltip": "Soften the edge over this many pixels."}),
                "invert": ("BOOLEAN", {"default": False,
                                       "tooltip": "Invert. Load Image's MASK output is 1 - alpha: invert it."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "A mask from the mask editor, Load Image or a segmentation node."}),
                "mask_image": ("IMAGE", {"tooltip": "A mask stored as an image (JPEG/PNG); an alpha channel wins."}),
                "reference_image": ("IMAGE", {"tooltip": "The reference image, for the preview only."}),
            },
        }

    def make_mask(self, threshold, threshold_mode, grow, feather, invert, mask=None, mask_image=None,
                  reference_image=None):
        check_declared_ranges(type(self), NODE, threshold=threshold, grow=grow, feather=feather)
        if mask is None and mask_image is None:
            raise MagicFaceInputError(NODE, "mask", "neither 'mask' nor 'mask_image' is connected.",
                                      "connect a MASK, or an image of the mask to 'mask_image'.")
        soft = _as_batch(mask.float()) if mask is not None else _luminance(mask_image.float())
        if threshold_mode == REFERENCE_THRESHOLD:
            binary = ((soft * 255).round() >= 255).float()
        else:
            binary = (soft > threshold).float()
        if invert:
            binary = 1 - binary
        result = feather_mask(grow_mask(binary, grow), feather).clamp(0, 1)
        return result, self._preview(result, reference_image)

    @staticmethod
    def _preview(mask, reference_image):
        if reference_image is None:
            return mask[..., None].expand(-1, -1, -1, 3).clone()
        picture = reference_image[:1, ..., :3].float()
        if picture.shape[1:3] != mask.shape[1:3]:
            picture = F.interpolate(picture.movedim(-1, 1), size=mask.shape[1:3], mode="bilinear",
                                    align_corners=False).movedim(1, -1)
        alpha = 0.5 * mask[:1, ..., None]
        return picture * (1 - alpha) + PREVIEW_TINT * alpha
