"""Where the attention layers of a UNet are, and which of them MagicFace patches.

A layer key is ComfyUI's attention-patch key: (block_name, block_id, transformer_index),
e.g. ("output", 6, 0). The downsampling factor of a layer is its latent stride: 1 at full
latent resolution, 2 at half, and so on. It is found from the module tree, so any
SD1.x / SD2.x / SDXL layout (and custom depths) is handled without tables.
"""
import math
from dataclasses import dataclass

from . import keys
from .errors import MagicFaceInputError
from .host import resamples, transformer_stacks, unet_blocks


@dataclass(frozen=True)
class AttentionLayer:
    key: tuple            # (block_name, block_id, transformer_index)
    factor: int           # latent stride of this layer
    has_cross: bool       # the block has a text cross-attention (attn2)

    @property
    def name(self) -> str:
        return f"{self.key[0]}_{self.key[1]}.{self.key[2]}"


def list_attention_layers(diffusion_model):
    """All self-attention layers of a UNetModel, in forward order."""
    blocks = unet_blocks(diffusion_model)
    if blocks is None:
        return []
    input_blocks, middle_block, output_blocks = blocks
    layers = []

    def add(block_name, block_id, block, factor):
        index = 0
        for depth, has_cross in transformer_stacks(block):
            for _ in range(depth):
                layers.append(AttentionLayer((block_name, block_id, index), factor, has_cross))
                index += 1

    factor = 1
    for block_id, block in enumerate(input_blocks):
        if resamples(block, "down"):
            factor *= 2
        add("input", block_id, block, factor)
    add("middle", 0, middle_block, factor)
    for block_id, block in enumerate(output_blocks):
        add("output", block_id, block, factor)
        if resamples(block, "up"):
            factor //= 2
    return layers


def parse_custom_layers(text: str):
    """'output_6.0, output_7' -> [("output", 6, 0), ("output", 7, None)]; None = every index."""
    parsed = []
    for item in filter(None, (part.strip() for part in text.replace(";", ",").split(","))):
        name, _, rest = item.partition("_")
        block_id, _, index = rest.partition(".")
        if name not in ("input", "middle", "output") or not block_id.isdigit() or (index and not index.isdigit()):
            raise MagicFaceInputError(
                "MagicFace Stage Scheduler", "custom_layers", f"cannot read layer '{item}'.",
                "write layers as output_6, output_7.0 (block name input/middle/output, block number, "
                "optional .transformer index), separated by commas.")
        parsed.append((name, int(block_id), int(index) if index else None))
    return parsed


def select_injection_layers(layers, preset: str, custom: str = ""):
    """The self-attention layers that get RSA/RBA."""
    decoder = [layer for layer in layers if layer.key[0] == "output"]
    if preset == keys.LAYER_PRESET_PAPER:
        # The reference code patches decoder self-attention at the two highest attention resolutions.
        finest = sorted({layer.factor for layer in decoder})[:2]
        chosen = [layer for layer in decoder if layer.factor in finest]
    elif preset == keys.LAYER_PRESET_ALL_DECODER:
        chosen = decoder
    elif preset == keys.LAYER_PRESET_CUSTOM:
        wanted = parse_custom_layers(custom)
        chosen = [layer for layer in layers
                  if any(layer.key[:2] == w[:2] and w[2] in (None, layer.key[2]) for w in wanted)]
        missing = [w for w in wanted if not any(layer.key[:2] == w[:2] for layer in layers)]
        if missing:
            names = ", ".join(f"{w[0]}_{w[1]}" for w in missing)
            raise MagicFaceInputError(
                "MagicFace Stage Scheduler", "custom_layers", f"this model has no attention in {names}.",
                "pick layers from: " + ", ".join(sorted({layer.name for layer in layers})))
    else:
        raise MagicFaceInputError("MagicFace Stage Scheduler", "layers", f"unknown preset '{preset}'.",
                                  "choose one of " + ", ".join(keys.LAYER_PRESETS))
    return chosen


def select_segmentation_layers(layers, layer_set: str = keys.SEGMENTATION_ALL_LAYERS):
    """Layers whose attention feeds the segmentation: every layer with text cross-attention
    except those at the model's finest attention resolution (all of them if it has only one).

    SD1.x/SD2.x attend at the full latent resolution too, so this is the reference code's set:
    its 32x32, 16x16 and 8x8 layers at a 64x64 latent. SDXL attends from half resolution on,
    so this is its 60 quarter-resolution layers, the reference's "32x32 and below" at 1024x1024;
    the 10 half-resolution layers would cost more than half of the segmentation's arithmetic.
    layer_set "one per block" keeps the first transformer of each block: on SDXL 6 of the 60
    (a tenth of the segmentation's work, approximate), elsewhere the same layers.
    """
    if layer_set not in keys.SEGMENTATION_LAYER_SETS:
        raise MagicFaceInputError("MagicFace Stage Scheduler", "segmentation_layers", f"unknown set '{layer_set}'.",
                                  "choose one of " + ", ".join(keys.SEGMENTATION_LAYER_SETS))
    crossed = [layer for layer in layers if layer.has_cross]
    finest = min((layer.factor for layer in crossed), default=0)
    chosen = [layer for layer in crossed if layer.factor > finest] or crossed
    if layer_set == keys.SEGMENTATION_ONE_PER_BLOCK:
        chosen = [layer for layer in chosen if layer.key[2] == 0]
    return chosen


def layer_hw(latent_hw, factor):
    """Token grid of a layer: ComfyUI's stride-2 convolutions round odd sizes up."""
    h, w = latent_hw
    while factor > 1:
        h, w, factor = (h + 1) // 2, (w + 1) // 2, factor // 2
    return h, w


# How far a resized layer's grid may stray from the latent's aspect ratio (rounding of odd sizes).
_RESIZED_ASPECT_TOLERANCE = 0.15


def token_grid(latent_hw, factor, tokens: int):
    """The (h, w) grid of a layer whose self-attention sees `tokens` image tokens in raster
    order: layer_hw, or, when another patch resized the features (Kohya Deep Shrink scales
    them down for the early steps), the grid of that many tokens closest to the latent's
    aspect ratio. None when no grid comes near it."""
    hw = layer_hw(latent_hw, factor)
    if hw[0] * hw[1] == tokens:
        return hw
    aspect = latent_hw[0] / latent_hw[1]
    guess = math.sqrt(tokens * aspect)
    candidates = [(h, tokens // h) for h in range(max(1, math.floor(guess) - 1), math.ceil(guess) + 2)
                  if tokens % h == 0]
    if not candidates:
        return None
    best = min(candidates, key=lambda grid: abs(grid[0] / grid[1] - aspect))
    return best if abs(best[0] / best[1] / aspect - 1) <= _RESIZED_ASPECT_TOLERANCE else None
