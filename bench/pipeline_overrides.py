"""Bench-side overrides of the product's own choices, each a context manager that swaps a pack
function for the block it guards: the separate reference pass instead of batch coupling, and
torch.compile'd versions of the per-step maths and of RSA's joined attention. They measure what
the product does not do; the product itself never runs them."""
from collections import Counter

import torch

from pipeline_models import glue, pack_module


class SeparatePassOnly:
    """The references always take the separate pass (as when other nodes' patches share the
    model), to compare it with batch coupling in the same process."""

    def __init__(self):
        self.call_module = glue("model_call")
        self.saved = self.call_module.can_couple

    def __enter__(self):
        self.call_module.can_couple = lambda *args, **kwargs: None
        return self

    def __exit__(self, *exc):
        self.call_module.can_couple = self.saved


# (module of the pack, function): each is looked up in that module at call time, so replacing
# the module's attribute reroutes every caller.
PER_STEP_MATHS = (("comfy_glue.propagation_queue", "propagate_cross_maps"),
                  ("comfy_glue.segmentation_history", "segment"),
                  ("comfy_glue.guidance_hook", "semantic_cfg_rate"))
# RSA's per-layer launches around its one fused call: the fold of the references (a
# concatenation and a gather) and the three concatenations that join them to the image's own
# keys, values and queries. Fixed shapes per layer, so each layer's shape compiles once.
JOINED_ATTENTION = (("magicface_attn.reference_kv", "fold_block"),
                    ("magicface_attn.attention", "_fold_bias_attention"))


class Compiled:
    """The given pack functions replaced by torch.compile'd versions of themselves (compiled on
    the first run) while the block runs. Where compilation fails (no C++ compiler or Triton on
    this machine) the bench drops the variant with a note saying why. first_run_calls: how often
    the first run called each replaced function, which shows that the replacements fired."""

    def __init__(self, targets):
        self.compiled = {target: torch.compile(getattr(pack_module(target[0]), target[1]), dynamic=False)
                         for target in targets}
        self.calls = Counter()
        self.first_run_calls = None
        self.saved = {}

    def _counted(self, name, function):
        def call(*args, **kwargs):
            self.calls[name] += 1
            return function(*args, **kwargs)
        return call

    def __enter__(self):
        counting = self.first_run_calls is None  # the timed runs after it call the compiled code directly
        for (module, name), function in self.compiled.items():
            self.saved[module, name] = getattr(pack_module(module), name)
            setattr(pack_module(module), name, self._counted(name, function) if counting else function)
        return self

    def __exit__(self, *exc):
        for (module, name), function in self.saved.items():
            setattr(pack_module(module), name, function)
        if self.first_run_calls is None:
            self.first_run_calls = dict(self.calls)
