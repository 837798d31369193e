"""MagicFacePatch: installs every MagicFace hook on a cloned ModelPatcher and owns its runs.

Hooks installed (all wrap what was there before, never overwrite it):
- attn1 replace on injection layers (RSA/RBA) and segmentation layers (query/key capture);
- attn2 replace on segmentation layers (segmentation maps);
- model_function_wrapper: per-call context, the references' rows (coupled into the call's batch
  or a separate pass, see coupling.py), segmentation at the end of a call;
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
from .attention_hooks import CrossAttentionHook, SelfAttentionHook, prepare_rba_regions
from .batch_rows import batch_rows, stack_elements, uncond_half_rows
from .concepts import _SharedOnCopy
from .guidance_hook import SemanticGuidanceBackstop, SemanticGuidanceHook
from .host import add_clone_callback, add_outer_sample_wrapper, get_attention_replace, has_outer_sample_wrapper
from .layers import layer_hw
from .coupling import can_couple, coupled_inputs
from .reference_pass import ReferenceInputs, run_reference_pass
from .run_state import CallContext, MagicFaceRun


class MagicFacePatch(_SharedOnCopy):
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


class CloneSeparator(_SharedOnCopy):
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


class OuterSampleHook(_SharedOnCopy):
    def __init__(self, patch):
        self.patch = patch

    def __call__(self, executor, *args, **kwargs):
        self.patch.start_run(owned_by_wrapper=True)
        try:
            return executor(*args, **kwargs)
        finally:
            self.patch.end_run()


class ModelCallHook(_SharedOnCopy):
    """model_function_wrapper: sets up one call's context around the host's apply_model."""

    def __init__(self, patch, previous=None):
        self.patch, self.previous = patch, previous

    def _forward(self, apply_model, args):
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def __call__(self, apply_model, args):
        x, timestep, c = args["input"], args["timestep"], args["c"]
        if c.get("transformer_options", {}).get(keys.CALL_CONTEXT_KEY) is not None:
            return self._forward(apply_model, args)  # a nested call of another MagicFace patch
        sigma = float(timestep.reshape(-1)[0])
        stage = self.patch.plan.stage_at(sigma)
        cond_or_uncond = tuple(args["cond_or_uncond"])
        if stage is None or keys.COND_FLAG not in cond_or_uncond:
            if stage is not None and keys.UNCOND_FLAG in cond_or_uncond:
                return self._uncond_half(apply_model, args, sigma, cond_or_uncond)
            return self._forward(apply_model, args)

        run = self.patch.run_for_call(sigma, x.shape[-2:])
        if not run.covers(x.shape[-2:]):
            return self._forward(apply_model, args)
        chunk = x.shape[0] // len(cond_or_uncond)
        extra_pass = run.extra_pass(sigma, cond_or_uncond)
        if extra_pass and not run.carries_positive_prompt(c["c_crossattn"]):
            # A baseline prediction of another prompt (SAG's blurred negative, PerpNeg's empty
            # prompt): left as plain as the step's own uncond rows, else the guidance would
            # subtract MagicFace's effect.
            run.calls[("guidance pass", "plain")] += 1
            return self._forward(apply_model, args)
        run.begin_step(sigma)
        fresh = run.references_due()
        call = None
        try:
            if not extra_pass:
                run.check_prompt(c["c_crossattn"], cond_or_uncond, chunk)
            refs = run.cached(("reference inputs", x.device, c["c_crossattn"].dtype, "y" in c),
                              lambda: ReferenceInputs(run.plan, apply_model.__self__, c, x.device,
                                                      (chunk,) + tuple(x.shape[1:])))
            box = can_couple(x, c, refs, has_foreign_wrapper=self.previous is not None) if fresh else None
            coupled = box is not None
            rows = run.cached(("rows", cond_or_uncond, chunk, coupled, x.device),
                              lambda: batch_rows(cond_or_uncond, chunk, refs.count if coupled else 0, x.device))
            call = CallContext(run=run, mode=keys.MODE_TARGET, sigma=sigma, latent_hw=tuple(x.shape[-2:]),
                               stage=stage, rows=rows, letterbox=box, segment=not extra_pass)
            if stage == keys.STAGE_RBA:
                call.regions = self._regions(run, sigma)
                if call.regions is not None:
                    prepare_rba_regions(call, {layer_hw(call.latent_hw, layer.factor)
                                               for layer in run.plan.injection_layers})
            options = self._own_hooks_outermost(dict(c.get("transformer_options", {})))
            options[keys.CALL_CONTEXT_KEY] = call
            target_c = {**c, "transformer_options": options}
            if coupled:
                coupled_x, coupled_t, coupled_c = coupled_inputs(x, timestep, target_c, refs, sigma, box)
                out = apply_model(coupled_x, coupled_t, **coupled_c)[: x.shape[0]]
            else:
                if fresh:
                    run_reference_pass(run, self.patch.self_hooks, apply_model, c, refs, sigma)
                out = self._forward(apply_model, {**args, "c": target_c})
            if fresh:
                run.references_made()
            run.calls[("references", ("coupled" if coupled else "separate pass") if fresh else "reused")] += 1
            run.stage_sigmas[stage].append(sigma)
            if extra_pass:
                run.calls[("guidance pass", "magicface")] += 1
            else:
                run.finish_segmentation(call)
                run.note_own_call(sigma, cond_or_uncond, c["c_crossattn"], chunk)
            return out
        except BaseException:
            self.patch.end_run(continuable=False)  # a failed or interrupted call frees every reference tensor now
            raise
        finally:
            if call is not None:
                call.release()
            # Exact mode: reference features are valid for one noise level only; dropping them after
            # each call means an interrupt between steps leaves nothing large behind. The approximate
            # mode keeps them for the next steps; the run's end releases them.
            if run.plan.reference_every == 1:
                run.release_references()

    def _uncond_half(self, apply_model, args, sigma, cond_or_uncond):
        """A call of a step's uncond rows without its cond rows (the host split the batch to fit
        memory): plain, but the segmentation reads it, as it reads uncond rows batched with cond."""
        x, c = args["input"], args["c"]
        run = self.patch.run_for_call(sigma, x.shape[-2:])
        if not run.covers(x.shape[-2:]):
            return self._forward(apply_model, args)
        chunk = x.shape[0] // len(cond_or_uncond)
        rows = run.cached(("uncond half rows", cond_or_uncond, chunk, x.device),
                          lambda: uncond_half_rows(cond_or_uncond, chunk, x.device))
        call = CallContext(run=run, mode=keys.MODE_TARGET, sigma=sigma, latent_hw=tuple(x.shape[-2:]), rows=rows)
        options = self._own_hooks_outermost(dict(c.get("transformer_options", {})))
        options[keys.CALL_CONTEXT_KEY] = call
        try:
            out = self._forward(apply_model, {**args, "c": {**c, "transformer_options": options}})
            run.finish_segmentation(call)
            run.calls[("segmentation", "uncond half")] += 1
            return out
        except BaseException:
            self.patch.end_run(continuable=False)
            raise
        finally:
            call.release()

    def _own_hooks_outermost(self, options):
        """transformer_options for one call in which every layer MagicFace patched runs its hook
        first: a replace another node set there after MagicFace Apply (Self-Attention Guidance
        at the middle block) is wrapped for this call, as if that node had come first."""
        replaces = options.get("patches_replace", {})
        wrapped = {}
        for (kind, key), hook in self.patch.installed.items():
            current = replaces.get(kind, {}).get(key)
            if getattr(current, "owner", None) is not self.patch:
                wrapped.setdefault(kind, dict(replaces.get(kind, {})))[key] = hook.around(current)
        if wrapped:
            options["patches_replace"] = {**replaces, **wrapped}
        return options

    @staticmethod
    def _regions(run, sigma):
        segmentation = run.segmentation_before(sigma)
        if segmentation is None:
            return None
        return stack_elements([s.concept_regions for s in segmentation])
