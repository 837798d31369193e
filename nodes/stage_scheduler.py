"""MagicFace Stage Scheduler: when RSA runs, when RBA takes over, where, and how."""
from ..comfy_glue import keys
from ..comfy_glue.schedule import StageSchedule
from ..comfy_glue.errors import MagicFaceInputError
from ..comfy_glue.layers import parse_custom_layers
from .ranges import check_declared_ranges

NODE = "MagicFace Stage Scheduler"
MAX_REFERENCE_EVERY = 10


class MagicFaceStageScheduler:
    CATEGORY = "MagicFace"
    FUNCTION = "schedule"
    RETURN_TYPES = (keys.SCHEDULE_TYPE,)
    RETURN_NAMES = ("schedule",)
    DESCRIPTION = "Timing and layers of MagicFace's two stages (RSA early, RBA late)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "switch_at": ("FLOAT", {"default": 0.42, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "Fraction of the schedule where RBA replaces RSA. 0.42 = the "
                                                   "reference code's step 21 of 50. Later: stronger likeness, "
                                                   "more concept mixing."}),
                "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": "Fraction where MagicFace starts acting."}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "Fraction where MagicFace stops acting."}),
                "layers": (list(keys.LAYER_PRESETS), {"tooltip": "paper: decoder self-attention at the two finest "
                                                      "attention resolutions (the reference code); all decoder: "
                                                      "every decoder self-attention; custom: the list below."}),
                "custom_layers": ("STRING", {"default": "output_6, output_7, output_8",
                                             "tooltip": "Used with 'custom': blocks like output_6 or output_6.0."}),
                "ca_scale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "Weight of non-concept words in the segmentation. 0 = auto "
                                                  "(0.9 for one concept, 0.6 for several)."}),
                "semantic_cfg": ("BOOLEAN", {"default": True,
                                             "tooltip": "Per-region CFG strength from the segmentation."}),
                "mask_mode": (list(keys.MASK_MODES), {"tooltip": "area: soft masks averaged to each layer "
                                                      "(default); reference: the reference code's 255-only, "
                                                      "128x128 nearest rule."}),
            },
            "optional": {
                "reference_every": ("INT", {"default": keys.REFERENCE_EVERY_FROM_SPEED, "min": 0,
                                            "max": MAX_REFERENCE_EVERY,
                                            "tooltip": "Faster, approximate: compute the references' features at "
                                                       "one step in this many and reuse them in between. 1 = every "
                                                       "step (exact, the reference code); 0 = as 'speed' says. Saves "
                                                       "most on large models such as SDXL, where each reference "
                                                       "costs about one more image in every step."}),
                "segmentation_layers": ([keys.SEGMENTATION_FROM_SPEED, *keys.SEGMENTATION_LAYER_SETS], {
                    "tooltip": "Faster, approximate on SDXL: 'one per block' reads the segmentation from the "
                               "first transformer of each block (6 of SDXL's 60 layers, about a tenth of its "
                               "cost). 'all layers' = the reference code. SD1.x/SD2.x: both are the same."}),
                # Last, so that workflows saved before it keep their widget values in place.
                "speed": (list(keys.SPEED_PRESETS), {
                    "tooltip": "exact: the published method. balanced: references every 2 steps. fast: references "
                               "every 4 steps, segmentation from one layer per block. "
                               "reference_every and segmentation_layers, when set, override it."}),
            },
        }

    def schedule(self, switch_at, start_at, end_at, layers, custom_layers, ca_scale, semantic_cfg, mask_mode,
                 reference_every=keys.REFERENCE_EVERY_FROM_SPEED, segmentation_layers=keys.SEGMENTATION_FROM_SPEED,
                 speed=keys.SPEED_EXACT):
        check_declared_ranges(type(self), NODE, start_at=start_at, switch_at=switch_at, end_at=end_at,
                              ca_scale=ca_scale, reference_every=reference_every)
        if start_at >= end_at:
            raise MagicFaceInputError(NODE, "end_at", f"start_at {start_at} >= end_at {end_at}: MagicFace would "
                                      "never act.", "set end_at above start_at (defaults: 0.0 and 1.0).")
        if not start_at <= switch_at <= end_at:
            raise MagicFaceInputError(NODE, "switch_at", f"{switch_at} lies outside start_at..end_at "
                                      f"({start_at}..{end_at}).", "set switch_at between start_at and end_at: "
                                      "RBA takes over from RSA there (default 0.42).")
        if layers == keys.LAYER_PRESET_CUSTOM:
            parse_custom_layers(custom_layers)  # fail here, not at sampling time
        return (StageSchedule(switch_at=switch_at, start_at=start_at, end_at=end_at, layers=layers,
                              custom_layers=custom_layers, ca_scale=ca_scale, semantic_cfg=semantic_cfg,
                              mask_mode=mask_mode, reference_every=int(reference_every),
                              segmentation_layers=segmentation_layers, speed=speed),)
