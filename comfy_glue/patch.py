"""MagicFacePatch: installs every MagicFace hook on a cloned ModelPatcher and owns its runs.

Hooks installed (all wrap what was there before, never overwrite it):
- attn1 replace on injection layers (RSA/RBA) and segmentation layers (query/key capture);
- attn2 replace on segmentation layers (segmentation maps);
- model_function_wrapper: the per-call pipeline (model_call.py): the call's context, the
  references' rows (coupled into the call's batch or a separate pass), segmentation at its end;
- sampler_cfg_function: semantic-aware CFG (when enabled), and a post-CFG function that keeps it
  on where another node replaces the cfg function later (see guidance_hook.py);
- ON_CLONE callback where the host has one: a clone gets its own cross-attention hooks (see
  CloneSeparator);
- OUTER_SAMPLE wrapper where the host has one, so a run's state is created and released in
  a try/finally around the whole sampling. The 2024 host has no such hook: there a run
  starts at the first model call whose sigma is above the previous one, and the previous
  run's state is released then.
"""
from . import keys
from .attention_hooks import CrossAttentionHook, SelfAttentionHook
from .guidance_hook import SemanticGuidanceBackstop, SemanticGuidanceHook
from .host import add_clone_callback, add_outer_sample_wrapper, get_attention_replace, has_outer_sample_wrapper
from .model_call import ModelCallHook
from .run_state import MagicFaceRun
from .shared_on_copy import SharedOnCopy


class MagicFacePatch(SharedOnCopy):
    def __init__(self, plan):
        self.plan = plan
        self.self_hooks = {}
        self.installed = {}  # ("attn1" | "attn2", layer key) -> the hook installed there
        self._run = None
        self._run_owned_by_wrapper = False
        self.last_report = None
        self._ended_run = None  # RunTail of the last finished run, for a run continuing its schedule

    # --- installation ---------------------------------------------------------------------
    def install(self, model_patcher):
        injection = {layer.key: layer for layer in self.plan.injection_layers}
        segmentation = {layer.key: layer for layer in self.plan.segmentation_layers}
        for key in list(injection) + [k for k in segmentation if k not in injection]:
            layer = injection.get(key) or segmentation[key]
            hook = SelfAttentionHook(layer, inject=key in injection, collect=key in segmentation,
                                     record=key == self.plan.injection_layers[-1].key,
                                     previous=get_attention_replace(model_patcher, "attn1", key), owner=self)
            model_patcher.set_model_attn1_replace(hook, key[0], key[1], key[2])
            self.installed[("attn1", key)] = hook
            if key in injection:
                self.self_hooks[key] = hook
        for key, layer in segmentation.items():
            hook = CrossAttentionHook(layer, previous=get_attention_replace(model_patcher, "attn2", key), owner=self)
            model_patcher.set_model_attn2_replace(hook, key[0], key[1], key[2])
            self.installed[("attn2", key)] = hook

        previous_wrapper = model_patcher.model_options.get("model_function_wrapper")
        model_patcher.set_model_unet_function_wrapper(ModelCallHook(self, previous_wrapper))
        if self.plan.semantic_cfg:
            previous_cfg = model_patcher.model_options.get("sampler_cfg_function")
            model_patcher.set_model_sampler_cfg_function(SemanticGuidanceHook(self, previous_cfg))
            model_patcher.set_model_sampler_post_cfg_function(SemanticGuidanceBackstop(self))
        if has_outer_sample_wrapper(model_patcher):
            add_outer_sample_wrapper(model_patcher, keys.WRAPPER_KEY, OuterSampleHook(self))
        add_clone_callback(model_patcher, keys.WRAPPER_KEY, CloneSeparator(self))

    # --- run lifecycle --------------------------------------------------------------------
    def start_run(self, owned_by_wrapper: bool):
        self.end_run()
        self._run = MagicFaceRun(self.plan)
        self._run_owned_by_wrapper = owned_by_wrapper
        return self._run

    def end_run(self, continuable: bool = True):
        """Ends the current run, freeing its references. A run that ended normally leaves its
        segmentation history behind for one that continues its schedule (see run_for_call)."""
        if self._run is not None:
            self.last_report = self._run.report()
            self._ended_run = self._run.tail() if continuable else None
            self._run.release()
        self._run = None

    def active_run(self):
        return self._run

    def run_for_call(self, sigma: float, hw):
        """The run a model call belongs to. On hosts with an end-of-sampling hook every sampler
        node starts a run; when its first call continues the last run's schedule on the same
        frame (a second KSampler Advanced taking over at a lower noise level), the new run takes
        over the last one's segmentations, so its first RBA step has regions, as within one
        sampler (the 2024 host keeps one run across such samplers anyway)."""
        run = self._run
        if run is None or (not self._run_owned_by_wrapper and not run.is_continued_by(sigma)):
            run = self.start_run(owned_by_wrapper=False)
        ended, self._ended_run = self._ended_run, None
        if run.last_sigma is None and ended is not None and ended.continues_to(sigma, hw):
            run.continue_from(ended)
        run.note_call(sigma)
        return run

    def report(self):
        """Call statistics of the current run, or of the last finished one."""
        if self._run is not None:
            return self._run.report()
        return self.last_report


class CloneSeparator(SharedOnCopy):
    """Clone callback: a clone that holds the very same cross-attention hook as the model it was
    cloned from (hosts whose clone() no longer deep-copies model_options) gets its own copy, so
    an IPAdapter-style node that add()s to the clone's hook leaves the original model alone."""

    def __init__(self, patch):
        self.patch = patch

    def __call__(self, parent, clone):
        for kind, key in self.patch.installed:
            hook = get_attention_replace(clone, kind, key)
            if isinstance(hook, CrossAttentionHook) and hook.owner is self.patch \
                    and hook is get_attention_replace(parent, kind, key):
                clone.set_model_attn2_replace(hook.detached(), key[0], key[1], key[2])


class OuterSampleHook(SharedOnCopy):
    def __init__(self, patch):
        self.patch = patch

    def __call__(self, executor, *args, **kwargs):
        self.patch.start_run(owned_by_wrapper=True)
        try:
            return executor(*args, **kwargs)
        finally:
            self.patch.end_run()
