"""The model_function_wrapper: MagicFace's work around one model call, in named steps.

1. classify: a call outside the effect window, a nested call or an area crop runs plain; a
   call of a step's uncond rows alone is only read by the segmentation; another node's extra
   pass with another prompt runs plain; every other call with cond rows is a target call.
2. prepare: the references' inputs on the device, coupling or not, the batch's rows, RBA's
   regions, and a CallContext that reaches the attention hooks through transformer_options.
3. run: coupled (the references' rows ride in this call, see coupling.py) or separate (their
   own pass first, see reference_pass.py), then the target's call.
4. finish: the references' age, the ledger, this noise level's segmentation; on any error the
   run ends at once, so no reference tensor outlives a failed or interrupted call.
"""
from contextlib import contextmanager
from dataclasses import dataclass

from . import keys, run_ledger
from .attention_hooks import prepare_rba_regions
from .batch_rows import batch_rows, stack_elements, uncond_half_rows
from .call_context import CallContext
from .coupling import can_couple, coupled_inputs
from .host import base_model_of
from .layers import layer_hw
from .reference_pass import ReferenceInputs, run_reference_pass
from .shared_on_copy import SharedOnCopy

PLAIN, UNCOND_HALF, TARGET = "plain", "uncond half", "target"


@dataclass(frozen=True)
class ModelCall:
    """What the host passes one model call: x (B, C, H, W), timestep (B,), c (the conditioning
    dict), cond_or_uncond (a flag per chunk of B // chunk rows); sigma and stage read from them."""
    x: object
    timestep: object
    c: dict
    cond_or_uncond: tuple
    sigma: float
    stage: object

    @classmethod
    def of(cls, args, plan):
        sigma = float(args["timestep"].reshape(-1)[0])
        return cls(args["input"], args["timestep"], args["c"], tuple(args["cond_or_uncond"]), sigma,
                   plan.stage_at(sigma))

    @property
    def hw(self) -> tuple:
        return tuple(self.x.shape[-2:])

    @property
    def chunk(self) -> int:
        return self.x.shape[0] // len(self.cond_or_uncond)

    @property
    def context(self):
        return self.c["c_crossattn"]

    def kind(self) -> str:
        if self.stage is None:
            return PLAIN
        if keys.COND_FLAG in self.cond_or_uncond:
            return TARGET
        return UNCOND_HALF if keys.UNCOND_FLAG in self.cond_or_uncond else PLAIN


def is_nested(args) -> bool:
    """A call made inside another MagicFace patch's call (a reference pass of a stacked patch)."""
    return args["c"].get("transformer_options", {}).get(keys.CALL_CONTEXT_KEY) is not None


class ModelCallHook(SharedOnCopy):
    """model_function_wrapper of one MagicFacePatch; previous: the wrapper it wraps, if any."""

    def __init__(self, patch, previous=None):
        self.patch, self.previous = patch, previous

    def _forward(self, apply_model, args):
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def __call__(self, apply_model, args):
        if is_nested(args):
            return self._forward(apply_model, args)
        call = ModelCall.of(args, self.patch.plan)
        kind = call.kind()
        if kind == PLAIN:
            return self._forward(apply_model, args)
        run = self.patch.run_for_call(call.sigma, call.hw)
        if not run.covers(call.hw):
            return self._forward(apply_model, args)
        if kind == UNCOND_HALF:
            return self._uncond_half(apply_model, args, call, run)
        extra_pass = run.own_calls.is_extra_pass(call.sigma, call.cond_or_uncond)
        if extra_pass and not run.own_calls.carries_positive_prompt(call.context):
            # A baseline prediction of another prompt (SAG's blurred negative, PerpNeg's empty
            # prompt): left as plain as the step's own uncond rows, else the guidance would
            # subtract MagicFace's effect.
            run.ledger.count(run_ledger.GUIDANCE_PASS, "plain")
            return self._forward(apply_model, args)
        return self._target(apply_model, args, call, run, extra_pass)

    @contextmanager
    def _run_ends_on_error(self):
        """A failed or interrupted call ends the run, freeing every reference tensor now."""
        try:
            yield
        except BaseException:
            self.patch.end_run(continuable=False)
            raise

    # --- a target call ----------------------------------------------------------------------
    def _target(self, apply_model, args, call, run, extra_pass: bool):
        run.begin_step(call.sigma)
        fresh = run.references.due(run.step_count)
        context = None
        try:
            with self._run_ends_on_error():
                if not extra_pass:
                    run.prompt.check(call.context, call.cond_or_uncond, call.chunk)
                refs = self._reference_inputs(run, apply_model, call)
                box = can_couple(call.x, call.c, refs, has_foreign_wrapper=self.previous is not None) if fresh else None
                context = self._target_context(run, call, refs, box, segment=not extra_pass)
                target_c = {**call.c, "transformer_options": self._options_for(call.c, context)}
                if box is not None:
                    out = self._run_coupled(apply_model, call, target_c, refs, box)
                else:
                    out = self._run_separate(apply_model, args, call, run, target_c, refs, fresh)
                self._finish_target(run, call, context, fresh, coupled=box is not None, extra_pass=extra_pass)
                return out
        finally:
            if context is not None:
                context.release()
            # Exact mode: reference features are valid for one noise level only; dropping them after
            # each call means an interrupt between steps leaves nothing large behind. The approximate
            # mode keeps them for the next steps; the run's end releases them.
            if run.plan.reference_every == 1:
                run.references.clear()

    @staticmethod
    def _reference_inputs(run, apply_model, call) -> ReferenceInputs:
        key = ("reference inputs", call.x.device, call.context.dtype, "y" in call.c)
        return run.cached(key, lambda: ReferenceInputs(run.plan, base_model_of(apply_model), call.c, call.x.device,
                                                       (call.chunk,) + tuple(call.x.shape[1:])))

    @staticmethod
    def _target_context(run, call, refs, box, segment: bool) -> CallContext:
        """The call's rows (the references' appended when coupled) and, under RBA, the concept
        regions of the previous step at every injection grid."""
        coupled = box is not None
        rows = run.cached(("rows", call.cond_or_uncond, call.chunk, coupled, call.x.device),
                          lambda: batch_rows(call.cond_or_uncond, call.chunk, refs.count if coupled else 0,
                                             call.x.device))
        context = CallContext(run=run, mode=keys.MODE_TARGET, sigma=call.sigma, latent_hw=call.hw,
                              stage=call.stage, rows=rows, letterbox=box, segment=segment)
        if call.stage == keys.STAGE_RBA:
            context.regions = _previous_regions(run, call.sigma)
            if context.regions is not None:
                prepare_rba_regions(context, {layer_hw(call.hw, layer.factor) for layer in run.plan.injection_layers})
        return context

    @staticmethod
    def _run_coupled(apply_model, call, target_c, refs, box):
        coupled_x, coupled_t, coupled_c = coupled_inputs(call.x, call.timestep, target_c, refs, call.sigma, box)
        return apply_model(coupled_x, coupled_t, **coupled_c)[: call.x.shape[0]]

    def _run_separate(self, apply_model, args, call, run, target_c, refs, fresh: bool):
        if fresh:
            run_reference_pass(run, self.patch.self_hooks, apply_model, call.c, refs, call.sigma)
        return self._forward(apply_model, {**args, "c": target_c})

    @staticmethod
    def _finish_target(run, call, context, fresh: bool, coupled: bool, extra_pass: bool):
        if fresh:
            run.references.made(run.step_count)
        run.ledger.count(run_ledger.REFERENCES, ("coupled" if coupled else "separate pass") if fresh else "reused")
        run.ledger.note_stage(call.stage, call.sigma)
        if extra_pass:
            run.ledger.count(run_ledger.GUIDANCE_PASS, "magicface")
        else:
            run.finish_segmentation(context)
            run.own_calls.note(call.sigma, call.cond_or_uncond, call.context, call.chunk)

    # --- an uncond half ---------------------------------------------------------------------
    def _uncond_half(self, apply_model, args, call, run):
        """A call of a step's uncond rows without its cond rows (the host split the batch to fit
        memory): plain, but the segmentation reads it, as it reads uncond rows batched with cond."""
        rows = run.cached(("uncond half rows", call.cond_or_uncond, call.chunk, call.x.device),
                          lambda: uncond_half_rows(call.cond_or_uncond, call.chunk, call.x.device))
        context = CallContext(run=run, mode=keys.MODE_TARGET, sigma=call.sigma, latent_hw=call.hw, rows=rows)
        try:
            with self._run_ends_on_error():
                uncond_c = {**call.c, "transformer_options": self._options_for(call.c, context)}
                out = self._forward(apply_model, {**args, "c": uncond_c})
                run.finish_segmentation(context)
                run.ledger.count(run_ledger.SEGMENTATION, "uncond half")
                return out
        finally:
            context.release()

    # --- transformer_options of a call --------------------------------------------------------
    def _options_for(self, c, context):
        """The call's transformer_options with its CallContext, MagicFace's hooks outermost."""
        options = self._own_hooks_outermost(dict(c.get("transformer_options", {})))
        options[keys.CALL_CONTEXT_KEY] = context
        return options

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


def _previous_regions(run, sigma):
    """(batch elements, R, Hs, Ws) bool concept regions of the previous step, or None."""
    segmentation = run.segmentation.before(sigma)
    if segmentation is None:
        return None
    return stack_elements([s.concept_regions for s in segmentation])
