"""Named keys that MagicFace uses inside ComfyUI's option dictionaries.

Kept in one place so that every hook, test and node agrees on them. Each vocabulary of a node
input is one statement that gives the tuple its combo lists and names every value in it, so the
names and the list cannot drift apart.
"""

# transformer_options entry holding the per-call MagicFace context (see call_context.CallContext).
CALL_CONTEXT_KEY = "magicface_call"
# extra_options entry set when a MagicFace attention hook calls the attention it wraps: a
# MagicFace hook found further in (another node wrapped it) then only passes through.
INNER_ATTENTION_KEY = "magicface_inner"
# Key under which the pack registers wrappers/callbacks on hosts that have the wrapper API.
WRAPPER_KEY = "magicface"
# Custom node socket types: never the core MODEL type for non-models.
CONCEPTS_TYPE = "MAGICFACE_CONCEPTS"
SCHEDULE_TYPE = "MAGICFACE_SCHEDULE"
PROBE_TYPE = "MAGICFACE_PROBE"

# The two stages of sampling: RSA (reference-aware self-attention) before the Stage Scheduler's
# switch, RBA (region-grouped blend attention) after it.
STAGE_RSA = "rsa"
STAGE_RBA = "rba"

# What a model call is to the attention hooks: the image being sampled, or the references' own
# pass whose keys and values are captured.
MODE_TARGET = "target"
MODE_CAPTURE = "capture"

# Which self-attention layers get RSA/RBA: the published code's, every decoder layer, or a list.
LAYER_PRESETS = (LAYER_PRESET_PAPER, LAYER_PRESET_ALL_DECODER, LAYER_PRESET_CUSTOM) = (
    "paper", "all decoder", "custom",
)

# Which cross-attention layers feed the segmentation. "all layers" is the reference code's set;
# "one per block" reads only the first transformer of each UNet block (SDXL: 6 of its 60 layers,
# SD1.x/SD2.x: the same set, their blocks hold one transformer each).
SEGMENTATION_LAYER_SETS = (SEGMENTATION_ALL_LAYERS, SEGMENTATION_ONE_PER_BLOCK) = (
    "all layers", "one per block",
)

# The Stage Scheduler's speed presets: each sets the two approximate levers below unless the
# user sets them (reference_every 0 and segmentation_layers "from speed" follow the preset).
# Chosen by measurement: docs/performance.md, "Speed presets".
SPEED_PRESETS = (SPEED_EXACT, SPEED_BALANCED, SPEED_FAST) = (
    "exact", "balanced", "fast",
)
REFERENCE_EVERY_FROM_SPEED = 0
SEGMENTATION_FROM_SPEED = "from speed"
SPEED_LEVERS = {  # preset -> (reference_every, segmentation layer set)
    SPEED_EXACT: (1, SEGMENTATION_ALL_LAYERS),
    SPEED_BALANCED: (2, SEGMENTATION_ALL_LAYERS),
    SPEED_FAST: (4, SEGMENTATION_ONE_PER_BLOCK),
}

# Where the references' per-step noise comes from. "per noise level": a generator seeded by the
# seed and the noise level, whatever the sampler. "published script": the published MagicFace
# script's stream (see reference_pass.PublishedNoiseStream).
REFERENCE_NOISE_SOURCES = (REFERENCE_NOISE_PER_LEVEL, REFERENCE_NOISE_PUBLISHED) = (
    "per noise level", "published script",
)

# Where a concept's mask comes from (Concept Loader / Concept From Folder). "auto": the connected
# mask, or without one the estimate from the reference's own attention (auto_mask.py);
# "attention": always the estimate; "whole image": no mask.
MASK_SOURCES = (MASK_SOURCE_AUTO, MASK_SOURCE_ATTENTION, MASK_SOURCE_WHOLE) = (
    "auto", "attention", "whole image",
)

# How the reference masks are made: "area" fits them with the picture into the square frame and
# keeps soft and thin masks at every layer; "reference" follows the published code's rules.
MASK_MODES = (MASK_MODE_AREA, MASK_MODE_REFERENCE) = (
    "area", "reference",
)

# ComfyUI batches cond rows with flag 0 and uncond rows with flag 1 in cond_or_uncond.
COND_FLAG = 0
UNCOND_FLAG = 1
