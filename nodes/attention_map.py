"""MagicFace Attention Map: for one point of the generated image, where it looks in each reference.

Uses what the run recorded at the finest injection layer on its last MagicFace call (no
extra sampling work): the point's query, the image's keys and the references' keys.
"""
import torch
import torch.nn.functional as F

from ..comfy_glue.errors import MagicFaceInputError
from ..magicface_attn import point_attention_to_references
from .previews import PROBE, add_legend, concept_colour, image_batch

NODE = "MagicFace Attention Map"
MARKER_COLOUR = torch.tensor([1.0, 1.0, 0.0])


def heat_colours(values: torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1] -> (H, W, 3): black-red-yellow-white ramp (perceptually ordered, colour-blind safe)."""
    return torch.stack([(values * 3).clamp(0, 1), (values * 3 - 1).clamp(0, 1), (values * 3 - 2).clamp(0, 1)], -1)


def _mark(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    marked = image.clone()
    height, width = marked.shape[:2]
    row, col = min(int(y * height), height - 1), min(int(x * width), width - 1)
    arm = max(2, min(height, width) // 20)
    marked[max(0, row - arm):row + arm + 1, col] = MARKER_COLOUR
    marked[row, max(0, col - arm):col + arm + 1] = MARKER_COLOUR
    return marked


def _record(probe):
    report = probe.report() if probe is not None and hasattr(probe, "report") else None
    record = (report or {}).get("attention")
    if record is None:
        raise MagicFaceInputError(NODE, "probe", "no MagicFace attention was recorded (no run yet, or every "
                                  "reference mask vanished).", "connect 'images' to the VAE Decode of the "
                                  "MagicFace KSampler so this node runs after sampling, and queue again.")
    return record, report


class MagicFaceAttentionMap:
    CATEGORY = "MagicFace"
    FUNCTION = "attention_map"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("reference_maps", "point")
    DESCRIPTION = "Where a chosen point of the generated image attends in each reference (last MagicFace step)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "probe": PROBE,
                "images": ("IMAGE", {"tooltip": "VAE Decode of the MagicFace KSampler (orders this after sampling)."}),
                "x": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Point to inspect, fraction of the width from the left."}),
                "y": ("FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Point to inspect, fraction of the height from the top."}),
                "opacity": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05}),
            }
        }

    def attention_map(self, probe, images, x, y, opacity):
        images = image_batch(images, NODE)
        record, report = _record(probe)
        height, width = record.hw
        index = min(int(y * height), height - 1) * width + min(int(x * width), width - 1)
        only = None
        if record.owner is not None:
            owner = int(record.owner[index])
            only = owner if owner >= 0 else -1
        if only == -1:  # under RBA a pixel of no concept attends only to itself
            maps = torch.zeros(record.refs.num_refs, record.refs.keys.shape[1])
        else:
            maps = point_attention_to_references(record.query[index], record.own_keys, record.refs, record.heads,
                                                 only_reference=only)
        top, left, height, width = record.ref_window
        maps = maps.reshape(maps.shape[0], *record.ref_grid)[:, top:top + height, left:left + width]
        return self._render(maps, probe.plan.reference_images, report["concept_names"], opacity), \
            _mark(images[0, ..., :3].float(), x, y)[None]

    @staticmethod
    def _render(maps, reference_images, names, opacity):
        size = reference_images.shape[1]
        frames = []
        for index, probabilities in enumerate(maps):  # (R, h, w): each reference's own window
            grid = probabilities[None, None]
            heat = F.interpolate(grid, size=(size, size), mode="nearest")[0, 0]
            heat = heat / heat.max().clamp_min(1e-12)
            alpha = opacity * heat[..., None]
            picture = reference_images[index] * (1 - alpha) + heat_colours(heat) * alpha
            caption = f"{100 * float(probabilities.sum()):.1f}% of the point's attention"
            frames.append(add_legend(picture.clamp(0, 1), [(names[index], concept_colour(index))], caption))
        return torch.stack(frames)
