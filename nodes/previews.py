"""Preview nodes: show where MagicFace put each concept, as IMAGEs ComfyUI can preview and save.

Both read the probe of MagicFace Apply after sampling. Their 'images' input is the decoded
result: it is the backdrop and, just as important, the dependency that makes ComfyUI run
them after the KSampler (with the probe alone they could run before sampling).
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..comfy_glue import keys
from ..comfy_glue.errors import MagicFaceInputError

# Concept colours, shared with web/magicface.js (tests check that both lists agree).
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#ffe119")
BACKGROUND = "#808080"
LEGEND_PAD = 4
LEGEND_SWATCH = 10
LEGEND_ROW = 14
LEGEND_INK = (235, 235, 235)
LEGEND_PAPER = (24, 24, 24)


def hex_rgb(colour: str) -> tuple:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def concept_colour(index: int) -> str:
    return BACKGROUND if index < 0 else PALETTE[index % len(PALETTE)]


def colour_labels(labels: torch.Tensor, concept_count: int) -> torch.Tensor:
    """(H, W) long labels (-1 = background) -> (H, W, 3) float colours in [0, 1]."""
    table = torch.tensor([hex_rgb(concept_colour(i)) for i in range(-1, concept_count)], dtype=torch.float32) / 255
    return table[(labels.long() + 1).clamp(0, concept_count)]


def overlay(image: torch.Tensor, labels: torch.Tensor, concept_count: int, opacity: float) -> torch.Tensor:
    """Blend the coloured label map (any grid, scaled up nearest) over one (H, W, 3) image."""
    colours = colour_labels(labels, concept_count).movedim(-1, 0)[None]
    colours = F.interpolate(colours, size=tuple(image.shape[:2]), mode="nearest")[0].movedim(0, -1)
    return image[..., :3].float().cpu() * (1 - opacity) + colours * opacity


def legend_entries(concept_names) -> list:
    return [(name, concept_colour(i)) for i, name in enumerate(concept_names)] + [("background", BACKGROUND)]


def _layout(draw, font, entries, width, top):
    """Flow the legend entries left to right, wrapping at the image width: [(x, y, name, colour)]."""
    x, y, placed = LEGEND_PAD, top, []
    for name, colour in entries:
        entry_width = LEGEND_SWATCH + 3 + int(draw.textlength(name, font=font)) + 2 * LEGEND_PAD
        if x > LEGEND_PAD and x + entry_width > width:
            x, y = LEGEND_PAD, y + LEGEND_ROW
        placed.append((x, y, name, colour))
        x += entry_width
    return placed, y + LEGEND_ROW + LEGEND_PAD


def add_legend(picture: torch.Tensor, entries, caption: str = "") -> torch.Tensor:
    """Append a strip under the (H, W, 3) picture with a colour swatch and word per entry.

    A strip rather than a box over the picture, so the label map stays fully visible. The
    caption has a row of its own, so every frame of a batch gets the same strip height.
    """
    width = picture.shape[1]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top = LEGEND_PAD + (LEGEND_ROW if caption else 0)
    placed, strip_height = _layout(measure, font, entries, width, top)
    strip = Image.new("RGB", (width, strip_height), LEGEND_PAPER)
    draw = ImageDraw.Draw(strip)
    if caption:
        draw.text((LEGEND_PAD, LEGEND_PAD), caption, fill=LEGEND_INK, font=font)
    for x, y, name, colour in placed:
        draw.rectangle((x, y + 1, x + LEGEND_SWATCH, y + 1 + LEGEND_SWATCH), fill=hex_rgb(colour))
        draw.text((x + LEGEND_SWATCH + 3, y), name, fill=LEGEND_INK, font=font)
    strip_tensor = torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255.0)
    return torch.cat([picture, strip_tensor], dim=0)


def recorded_labels(probe, node: str):
    """(concept names, [(sigma, (E, Hs, Ws) labels)]) of the probe's latest run, or a clear error."""
    if probe is None:
        raise MagicFaceInputError(node, "probe", "MagicFace Apply patched nothing (no concept connected, or every "
                                  "concept mask empty with semantic CFG off), so there is no segmentation to show.",
                                  "connect a Concept Loader with a non-empty mask, or remove this preview node.")
    report = probe.report() if hasattr(probe, "report") else None
    history = (report or {}).get("label_history") or []
    if not history:
        raise MagicFaceInputError(node, "probe", "MagicFace has not recorded a sampling run yet.",
                                  "connect 'images' to the VAE Decode of the KSampler whose model comes from "
                                  "MagicFace Apply, so this node runs after sampling, and check that the Stage "
                                  "Scheduler's start_at/end_at leave MagicFace some steps.")
    return tuple(report["concept_names"]), history


def image_batch(images, node: str) -> torch.Tensor:
    if images is None or images.dim() != 4 or images.shape[0] == 0:
        raise MagicFaceInputError(node, "images", "expected an IMAGE batch (B, H, W, C).",
                                  "connect the VAE Decode output of the MagicFace KSampler.")
    return images


PROBE = (keys.PROBE_TYPE, {"tooltip": "The 'probe' output of MagicFace Apply."})
OPACITY = ("FLOAT", {"default": 0.55, "min": 0.0, "max": 1.0, "step": 0.05,
                     "tooltip": "How strongly the concept colours cover the image (1 = colours only)."})


class MagicFaceSegmentationPreview:
    CATEGORY = "MagicFace"
    FUNCTION = "preview"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("preview",)
    NODE = "MagicFace Segmentation Preview"
    DESCRIPTION = ("Where each concept landed at the last MagicFace step: its colour over the generated image, "
                   "with a legend. Grey = background / no concept.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "probe": PROBE,
                "images": ("IMAGE", {"tooltip": "The decoded result of the KSampler that used MagicFace's model."}),
                "opacity": OPACITY,
                "legend": ("BOOLEAN", {"default": True, "tooltip": "Add a strip naming each concept's colour."}),
            }
        }

    def preview(self, probe, images, opacity, legend):
        names, history = recorded_labels(probe, self.NODE)
        images = image_batch(images, self.NODE)
        labels = history[-1][1]
        frames = []
        for index in range(images.shape[0]):
            frame = overlay(images[index], labels[index % labels.shape[0]], len(names), opacity)
            frames.append(add_legend(frame, legend_entries(names)) if legend else frame)
        return (torch.stack(frames),)


class MagicFaceSegmentationSteps:
    CATEGORY = "MagicFace"
    FUNCTION = "steps"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("steps",)
    NODE = "MagicFace Segmentation Steps"
    DESCRIPTION = ("The segmentation at every recorded MagicFace step (or every k-th) as an IMAGE batch, "
                   "to see when the concepts settle.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "probe": PROBE,
                "images": ("IMAGE", {"tooltip": "The decoded result: the backdrop of every frame, and it makes "
                                     "this node run after sampling."}),
                "every": ("INT", {"default": 1, "min": 1, "max": 1000,
                                  "tooltip": "Keep every k-th recorded step (the last step is always kept)."}),
                "opacity": OPACITY,
            }
        }

    def steps(self, probe, images, every, opacity):
        names, history = recorded_labels(probe, self.NODE)
        images = image_batch(images, self.NODE)
        chosen = list(range(0, len(history), every))
        if chosen[-1] != len(history) - 1:
            chosen.append(len(history) - 1)
        frames = []
        for step in chosen:
            sigma, labels = history[step]
            for element in range(labels.shape[0]):
                backdrop = images[element % images.shape[0]]
                frame = overlay(backdrop, labels[element], len(names), opacity)
                caption = f"step {step + 1}/{len(history)}  sigma {sigma:.3g}"
                frames.append(add_legend(frame, legend_entries(names), caption))
        return (torch.stack(frames),)
