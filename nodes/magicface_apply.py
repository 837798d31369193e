"""MagicFace Apply: patch a clone of the model so a normal KSampler runs MagicFace."""
from ..comfy_glue import keys
from ..comfy_glue.builder import apply_magicface
from ..comfy_glue.concepts import ConceptList
from ..comfy_glue.schedule import StageSchedule


class MagicFaceApply:
    CATEGORY = "MagicFace"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "CONDITIONING", keys.PROBE_TYPE)
    RETURN_NAMES = ("model", "positive", "probe")
    DESCRIPTION = ("Customise the generated person with the concepts. Use the 'positive' output in the "
                   "KSampler so the prompt is typed once.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP", {"tooltip": "The checkpoint's CLIP: finds the concept words and encodes prompts."}),
                "vae": ("VAE", {"tooltip": "Encodes the reference images."}),
                "prompt": ("STRING", {"multiline": True, "default": "a photo of a man",
                                      "tooltip": "Target prompt; every concept's word must appear in it."}),
            },
            "optional": {
                "concepts": (keys.CONCEPTS_TYPE, {"tooltip": "From Concept Loader nodes (chain them for several). "
                                                  "Unconnected: MagicFace is off and the model is unchanged."}),
                "schedule": (keys.SCHEDULE_TYPE, {"tooltip": "From Stage Scheduler. Unconnected: reference defaults."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                 "tooltip": "Seed of the noise added to the references at each step."}),
                "reference_size": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                                           "tooltip": "Square size the references are encoded at. 0 = the model's "
                                                      "native size (512 SD1.x, 768 SD2-v, 1024 SDXL)."}),
                "reference_noise": (list(keys.REFERENCE_NOISE_SOURCES), {
                    "tooltip": "per noise level: fresh noise at each step from the seed and the noise level "
                               "(any sampler). published script: the published MagicFace script's noise stream; "
                               "with the same seed here and in the KSampler, ddim / ddim_uniform and 50 steps, "
                               "the references get the very noise of the published run."}),
            },
        }

    def apply(self, model, clip, vae, prompt, concepts=None, schedule=None, seed=0, reference_size=0,
              reference_noise=keys.REFERENCE_NOISE_PER_LEVEL):
        patched, positive, probe = apply_magicface(model, clip, vae, concepts or ConceptList(), prompt,
                                                   schedule or StageSchedule(), seed=seed,
                                                   reference_size=reference_size, reference_noise=reference_noise)
        return patched, positive, probe
