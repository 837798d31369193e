"""MagicFace Mask Preview: the mask of every concept as MagicFace Apply will use it (drawn,
or estimated from the reference's attention), over its reference in the square frame.

It reads the plan of the probe, so it runs right after MagicFace Apply, before sampling.
"""
import torch
import torch.nn.functional as F

from ..comfy_glue.errors import MagicFaceInputError
from .previews import OPACITY, PROBE, add_legend, concept_colour, hex_rgb

NODE = "MagicFace Mask Preview"


class MagicFaceMaskPreview:
    CATEGORY = "MagicFace"
    FUNCTION = "preview"
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("masks", "overlay")
    DESCRIPTION = "Each concept's mask as MagicFace will use it, before sampling (estimated ones included)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"probe": PROBE,
                             "opacity": OPACITY}}

    def preview(self, probe, opacity):
        if probe is None:
            raise MagicFaceInputError(NODE, "probe", "MagicFace Apply patched nothing (no concept connected, or "
                                      "every concept silent with semantic CFG off), so there is no mask to show.",
                                      "connect a Concept Loader with a non-empty mask, or remove this node.")
        plan = probe.plan
        images = plan.reference_images.float().cpu()
        masks = F.interpolate(plan.reference_masks.float().cpu()[:, None], size=tuple(images.shape[1:3]),
                              mode="nearest")[:, 0]
        frames = [self._overlay(image, mask, index, name, opacity)
                  for index, (image, mask, name) in enumerate(zip(images, masks, plan.concept_names))]
        return masks, torch.stack(frames)

    @staticmethod
    def _overlay(image, mask, index, name, opacity):
        colour = torch.tensor(hex_rgb(concept_colour(index)), dtype=torch.float32) / 255
        alpha = opacity * mask[..., None]
        picture = image[..., :3] * (1 - alpha) + colour * alpha
        return add_legend(picture, [(name, concept_colour(index))])
