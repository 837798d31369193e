"""A mixin for objects that ComfyUI must never copy.

Hosts that deep-copy model_options on ModelPatcher.clone() would copy every hook, plan and
reference image MagicFace put there at each LoRA or patch node: these return themselves from
__deepcopy__, so every clone shares them.
"""


class SharedOnCopy:
    def __deepcopy__(self, memo):
        return self
