"""One sampling run of one patched model, made of named parts.

A MagicFaceRun holds what lives from the first model call of a run to its end: the run's
identity (its noise levels and frame), a per-run cache of device constants, and its parts:
- references: the references' features per injection layer (reference_store.ReferenceStore);
- segmentation: the segmentations by noise level (segmentation_history.SegmentationHistory);
- own_calls: which calls were MagicFace's own, to tell other nodes' passes (own_calls.OwnCalls);
- prompt: the once-per-run check of the sampler's prompt (prompt_check.PromptCheck);
- ledger: what the run did, counted (run_ledger.RunLedger).
The hooks act; the run only stores. Everything is keyed by noise level (noise_levels.py).
"""
from dataclasses import dataclass

from . import run_ledger
from .noise_levels import continues_schedule, same_sigma
from .own_calls import OwnCalls
from .prompt_check import PromptCheck
from .reference_store import ReferenceStore
from .run_ledger import RunLedger
from .segmentation_history import SegmentationHistory


@dataclass(frozen=True)
class RunTail:
    """What a finished run leaves for a run that continues its schedule: small device tensors."""
    last_sigma: float
    frame_hw: tuple
    segmentations: tuple
    own_rows: tuple

    def continues_to(self, sigma: float, hw) -> bool:
        return continues_schedule(self.last_sigma, sigma) and self.frame_hw == tuple(hw)


class MagicFaceRun:
    def __init__(self, plan):
        self.plan = plan
        self.last_sigma = None
        self.frame_hw = None             # latent grid of the full frame (largest seen in this run)
        self._cache = {}                 # per-run constants on the device (see cached())
        self.step_count = 0              # noise levels MagicFace acted on so far
        self._step_sigma = None
        self.ledger = RunLedger()
        self.references = ReferenceStore(plan, self.cached)
        self.segmentation = SegmentationHistory(plan, self._cache)
        self.own_calls = OwnCalls()
        self.prompt = PromptCheck(plan, self.ledger)
        self.attention_record = None     # call_context.AttentionRecord of the last injected call
        self._cfg_hook_ran = False       # set by the cfg hook, read and reset by the post-CFG backstop

    # --- identity ---------------------------------------------------------------------------
    def is_continued_by(self, sigma: float) -> bool:
        """Whether a model call at this sigma belongs to this run (sigmas never rise within one)."""
        return self.last_sigma is None or continues_schedule(self.last_sigma, sigma)

    def note_call(self, sigma: float):
        self.last_sigma = sigma

    def covers(self, hw) -> bool:
        """Whether a call on this latent grid is the full frame. Area conditioning makes the host
        call the model on crops beside the full latent; concept regions and references belong to
        the full frame, so MagicFace leaves crops plain. Learns the frame as the largest grid."""
        hw = tuple(hw)
        if self.frame_hw is None or hw[0] * hw[1] > self.frame_hw[0] * self.frame_hw[1]:
            self.frame_hw = hw
        return hw == self.frame_hw

    def begin_step(self, sigma: float):
        """Counts noise levels, not calls: samplers may call the model several times at one sigma."""
        if self._step_sigma is None or not same_sigma(sigma, self._step_sigma):
            self.step_count += 1
            self._step_sigma = sigma

    def tail(self):
        """RunTail of this run, None if it never segmented."""
        if not self.segmentation.segmentations:
            return None
        return RunTail(self.last_sigma, self.frame_hw, self.segmentation.segmentations, self.own_calls.rows)

    def continue_from(self, tail: RunTail):
        """Start from an earlier run's segmentations (its noise levels are all above this run's)."""
        self.segmentation = SegmentationHistory(self.plan, self._cache, tail.segmentations)
        self.own_calls = OwnCalls(tail.own_rows)
        self.frame_hw = tail.frame_hw

    # --- per-run cache ----------------------------------------------------------------------
    def cached(self, key, build):
        """build() once per run and key: what is the same at every step (inputs moved to the
        device, row selectors, mask layouts) is made once, so the per-step path neither copies
        from the host nor waits for the device."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def device_constants(self) -> dict:
        """The same per-run cache, for the core's shape-only tensors (magicface_attn.device_constants)."""
        return self._cache

    # --- what the hooks leave -----------------------------------------------------------------
    def finish_segmentation(self, call):
        """The segmentation of the call's noise level, from the maps its hooks queued."""
        if self.segmentation.finish(call):
            self.ledger.count(run_ledger.SEGMENTATION, "step")

    def note_cfg_hook_ran(self):
        """The semantic CFG hook ran for the current step (the post-CFG backstop then stays idle)."""
        self._cfg_hook_ran = True

    def take_cfg_hook_ran(self) -> bool:
        """Whether the CFG hook ran since the last call; resets it for the next step."""
        ran, self._cfg_hook_ran = self._cfg_hook_ran, False
        return ran

    def keep_attention_record(self, record):
        """The attention of the last injected call, for the Attention Map node."""
        self.attention_record = record

    def report(self) -> dict:
        return {
            **self.ledger.report(),
            "segmentation_sigmas": self.segmentation.segmented_sigmas(),
            "label_history": self.segmentation.label_history(),
            "segmentation": self.segmentation.latest(),
            "concept_names": self.plan.concept_names,
            "attention": self.attention_record,
        }

    # --- release ----------------------------------------------------------------------------
    def release(self):
        self.references.clear()
        self.segmentation.clear()
        self.attention_record = None
        self._cache.clear()
