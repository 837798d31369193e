"""Per-run and per-call MagicFace state.

A MagicFaceRun lives for one sampling run of one patched model: reference features of the
current noise level, the segmentation history and call statistics. A CallContext lives for
one model call and travels to the attention hooks through transformer_options.
Everything is keyed by noise level (sigma), never by call counters, so samplers that call
the model several times per step, skip the uncond branch or batch several images work.
"""
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import keys
from .batch_rows import SEG_COND, SEG_PAIRS, SEG_UNCOND, row_flags, stack_elements
from .errors import MagicFaceInputError
from .layers import layer_hw
from .propagation_queue import PropagationQueue
from ..magicface_attn import make_reference_kv, mask_to_layer, pack_layout, segment

log = logging.getLogger("MagicFace")

SIGMA_RTOL = 1e-5
KEPT_SEGMENTATIONS = 3


def same_sigma(a: float, b: float) -> bool:
    return abs(a - b) <= SIGMA_RTOL * max(abs(a), abs(b), 1e-12)


def continues_schedule(last_sigma: float, sigma: float) -> bool:
    """Whether a call at sigma can follow one at last_sigma in one schedule (sigmas never rise)."""
    return sigma <= last_sigma * (1 + SIGMA_RTOL)


def _join_halves(uncond, cond):
    """[(maps, hw)] of a split step's uncond and cond calls -> the layout of one call with both,
    rows [uncond_0, cond_0, uncond_1, ...]; None when the halves do not match layer by layer."""
    if len(uncond) != len(cond):
        return None
    joined = []
    for (u, u_hw), (c, c_hw) in zip(uncond, cond):
        if u_hw != c_hw or u.shape != c.shape:
            return None
        joined.append((torch.stack([u, c], dim=2).flatten(1, 2), u_hw))  # (L, rows, N, T) each
    return joined


@dataclass
class AttentionRecord:
    """One injection layer's last cond query/keys and references, for the attention-map preview.

    query, own_keys: (N, C) of the first cond row; owner: (N,) concept index per pixel under RBA
    (-1 none), None under RSA; hw: the layer's token grid; ref_grid: the grid of the references'
    keys; ref_window: (top, left, h, w) of the reference images inside it (letterboxing).
    """
    layer: object
    stage: str
    query: torch.Tensor
    own_keys: torch.Tensor
    refs: object
    heads: int
    hw: tuple
    ref_grid: tuple
    ref_window: tuple
    owner: Optional[torch.Tensor] = None


@dataclass
class CallContext:
    run: "MagicFaceRun"
    mode: str                       # keys.MODE_TARGET or keys.MODE_CAPTURE
    sigma: float
    latent_hw: tuple
    stage: Optional[str] = None     # keys.STAGE_RSA / STAGE_RBA / None
    rows: Optional[object] = None   # batch_rows.BatchRows of a target call
    letterbox: Optional[object] = None  # reference_pass.Letterbox when the references ride in this call
    regions: Optional[torch.Tensor] = None        # (batch_elements, R, Hs, Ws) bool concept regions for RBA
    pending_self: dict = field(default_factory=dict)   # layer key -> (q, k, (h, w)) of seg rows
    propagation: PropagationQueue = field(init=False)  # segmentation layers' maps
    layer_regions: dict = field(default_factory=dict)   # (h, w) -> (cond rows, R, h*w) bool
    layer_groups: dict = field(default_factory=dict)    # (h, w) -> concept_pixel_groups of layer_regions
    segment: bool = True            # this call makes its noise level's segmentation (see MagicFaceRun.extra_pass)

    def __post_init__(self):
        self.propagation = PropagationQueue(self.run.device_constants)

    def release(self):
        self.pending_self.clear()
        self.propagation.clear()
        self.layer_regions.clear()
        self.layer_groups.clear()
        self.regions = None


@dataclass(frozen=True)
class RunTail:
    """What a finished run leaves for a run that continues its schedule: small device tensors."""
    last_sigma: float
    frame_hw: tuple
    segmentations: tuple
    segmented_rows: tuple

    def continues_to(self, sigma: float, hw) -> bool:
        return continues_schedule(self.last_sigma, sigma) and self.frame_hw == tuple(hw)


class MagicFaceRun:
    def __init__(self, plan):
        self.plan = plan
        self.last_sigma = None
        self.frame_hw = None             # latent grid of the full frame (largest seen in this run)
        self.reference_kv = {}
        self.reference_windows = {}      # layer key -> (keys grid (h, w), (top, left, h, w) of the references)
        self.segmentations = []          # [(sigma, [Segmentation per batch element])]
        self.label_history = []          # [(sigma, (E, Hs, Ws) long labels)]: small, kept for previews
        self.calls = Counter()           # (stage or "segmentation", layer name) -> calls
        self.attention_record = None     # AttentionRecord of the last injected call
        self.stage_sigmas = {keys.STAGE_RSA: [], keys.STAGE_RBA: []}
        self._cache = {}                 # per-run constants on the device (see cached())
        self.step_count = 0              # noise levels MagicFace acted on so far
        self._step_sigma = None
        self.reference_step = None       # step_count when the stored reference features were made
        self.segmented_rows = []         # [(sigma, cond_or_uncond of the call that made its segmentation)]
        self.positive_context = None     # (T, C) text context of the last own call's first cond row
        self.cfg_hook_ran = False        # set by the cfg hook, read and reset by the post-CFG backstop
        self.prompt_checked = False
        self._split_half = None          # (sigma, SEG_COND | SEG_UNCOND, maps) of a split step's first half

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

    # --- reference features -------------------------------------------------------------
    def begin_step(self, sigma: float):
        """Counts noise levels, not calls: samplers may call the model several times at one sigma."""
        if self._step_sigma is None or not same_sigma(sigma, self._step_sigma):
            self.step_count += 1
            self._step_sigma = sigma

    def check_prompt(self, context, cond_or_uncond, chunk: int):
        """Once per run, whether the call's cond rows carry Apply's prompt at the concept words'
        tokens. Warns where none does (e.g. a separate CLIP Text Encode with another prompt):
        MagicFace would act on whatever tokens sit there. Stops where only rows of another slot
        do (DualCFGGuider passes the positive prompt last): MagicFace would act on the negative.
        A few host syncs per run."""
        if self.prompt_checked or self.plan.prompt_context is None:
            return
        self.prompt_checked = True
        positions = [t for group in self.plan.concept_tokens for t in group if t < context.shape[1]]
        expected = self.plan.prompt_context[positions].to(context.device, context.dtype)
        matching = {flag for row, flag in enumerate(row_flags(cond_or_uncond, chunk))
                    if torch.equal(context[row, positions], expected)}
        if keys.COND_FLAG in matching:
            return
        if matching:
            raise MagicFaceInputError(
                "MagicFace Apply", "positive", "the sampler passes MagicFace Apply's prompt in another slot than a CFG "
                "sampler's positive one (as DualCFGGuider does), so MagicFace would act on another prompt.",
                "sample with KSampler, or SamplerCustom(Advanced) with CFGGuider, BasicGuider or PerpNegGuider.")
        self.calls[("prompt", "not MagicFace Apply's")] += 1
        log.warning("[MagicFace Apply] the sampler's positive prompt differs from MagicFace Apply's prompt at the "
                    "concept words (%s), so MagicFace may act on other words. Fix: connect MagicFace Apply's "
                    "'positive' output to the sampler (through nodes that keep the text, such as Apply ControlNet); "
                    "ignore this if the text was changed on purpose (e.g. Conditioning Average).",
                    ", ".join(self.plan.concept_names))

    def references_due(self) -> bool:
        """Whether this call computes the references' features, or reuses those of an earlier
        step (plan.reference_every > 1, the approximate mode)."""
        return not self.reference_kv or self.step_count - self.reference_step >= self.plan.reference_every

    def references_made(self):
        self.reference_step = self.step_count

    def _mask_layout(self, hw, window, device):
        """Kept-key layout of the reference masks on one layer grid, the masks filling `window`
        (top, left, h, w) of it and nothing outside (one host sync, once per run and grid)."""
        mode = "nearest" if self.plan.mask_mode == keys.MASK_MODE_REFERENCE else "area"
        top, left, height, width = window
        masks = mask_to_layer(self.plan.reference_masks.to(device), height, width, mode=mode)
        if (height, width) != tuple(hw):
            framed = masks.new_zeros(masks.shape[0], *hw)
            framed[:, top:top + height, left:left + width] = masks.reshape(-1, height, width)
            masks = framed.reshape(masks.shape[0], -1)
        return masks, pack_layout(masks, self.plan.weights, device)

    def store_reference(self, layer, k, v, heads, frame_hw, box=None):
        """Reference keys/values of one layer; frame_hw: the latent grid they were computed on,
        box: the references' Letterbox in it (None: they fill it)."""
        hw = layer_hw(frame_hw, layer.factor)
        if hw[0] * hw[1] != k.shape[1]:
            raise RuntimeError(f"MagicFace: reference tokens {k.shape[1]} do not match grid {hw} at {layer.name}")
        window = (0, 0) + hw if box is None else box.window(layer.factor)
        masks, layout = self.cached(("mask layout", hw, window, k.device),
                                    lambda: self._mask_layout(hw, window, k.device))
        self.reference_kv[layer.key] = make_reference_kv(k, v, masks, self.plan.weights, heads, layout=layout)
        self.reference_windows[layer.key] = (hw, window)

    # --- segmentation ----------------------------------------------------------------------
    def finish_segmentation(self, call: CallContext):
        propagated = call.propagation.maps()
        if not propagated:
            return
        layout = call.rows.seg_layout
        if layout != SEG_PAIRS:  # half of a step the host split: join it with the other half
            # A copy of the list: the call's queue clears its own when the call ends.
            other, self._split_half = self._split_half, (call.sigma, layout, list(propagated))
            joined = None
            if other is not None and same_sigma(other[0], call.sigma) and other[1] != layout:
                halves = {layout: propagated, other[1]: other[2]}
                joined = _join_halves(halves[SEG_UNCOND], halves[SEG_COND])
            if joined is not None:
                propagated, layout, self._split_half = joined, SEG_PAIRS, None
            elif layout == SEG_UNCOND:
                return  # the cond half makes the segmentation
        self._segment(propagated, layout == SEG_PAIRS, call.sigma, call.latent_hw)

    def _segment(self, propagated, with_uncond: bool, sigma: float, latent_hw):
        """This noise level's segmentation from the propagated maps of its segmentation rows."""
        elements = propagated[0][0].shape[1] // (2 if with_uncond else 1)  # maps: (L, rows, N, T)
        out_hw = layer_hw(latent_hw, 2)
        tokens = [list(t) for t in self.plan.concept_tokens]
        per_element = []
        for element in range(elements):
            layer_maps = []
            for maps, hw in propagated:
                layer_maps.append((maps.unflatten(1, (elements, -1))[:, element], hw))
            per_element.append(segment(layer_maps, out_hw, tokens, self.plan.ca_scale, constants=self._cache))
        self.segmentations = [(s, seg) for s, seg in self.segmentations if not same_sigma(s, sigma)]
        self.segmentations.append((sigma, per_element))
        # Kept on the device: moving them to the CPU here would synchronise every step.
        self.label_history = [(s, labels) for s, labels in self.label_history if not same_sigma(s, sigma)]
        self.label_history.append((sigma, stack_elements([seg.labels for seg in per_element])))
        # Only the current and the previous step are ever read back.
        del self.segmentations[:-KEPT_SEGMENTATIONS]
        self.calls[("segmentation", "step")] += 1

    def note_own_call(self, sigma: float, cond_or_uncond, context, chunk: int):
        """After a call that made this noise level's segmentation: its rows, and its positive
        prompt (a view of the call's context, kept until the next own call)."""
        self.segmented_rows = [(s, rows) for s, rows in self.segmented_rows[-KEPT_SEGMENTATIONS:]
                               if not same_sigma(s, sigma)] + [(sigma, tuple(cond_or_uncond))]
        self.positive_context = context[cond_or_uncond.index(keys.COND_FLAG) * chunk]

    def extra_pass(self, sigma: float, cond_or_uncond) -> bool:
        """Whether a call is another node's extra pass at a noise level whose own call already ran
        (Self-Attention and Perturbed-Attention Guidance call the model again after CFG): it has
        other rows than that call. A repeat with the same rows (heun evaluating the same noise
        level again) is a call of its own and makes the segmentation anew."""
        for s, rows in reversed(self.segmented_rows):
            if same_sigma(s, sigma):
                return rows != tuple(cond_or_uncond)
        return False

    def carries_positive_prompt(self, context) -> bool:
        """Whether the first row's text context is the last own call's positive prompt: true for
        Perturbed-Attention Guidance's pass, false for Self-Attention Guidance's (the negative
        prompt in the cond slot) and the 2024 PerpNeg node's (the empty prompt). One host sync,
        on extra passes only; contexts of different lengths are compared over the shorter (the
        host repeats shorter ones)."""
        if self.positive_context is None:
            return False
        tokens = min(context.shape[1], self.positive_context.shape[0])
        return bool(torch.equal(context[0, :tokens], self.positive_context[:tokens]))

    def segmentation_before(self, sigma: float):
        """Newest segmentation computed at a higher noise level (the previous step)."""
        earlier = [(s, seg) for s, seg in self.segmentations if s > sigma and not same_sigma(s, sigma)]
        return min(earlier, key=lambda item: item[0])[1] if earlier else None

    def segmentation_at(self, sigma: float):
        for s, seg in reversed(self.segmentations):
            if same_sigma(s, sigma):
                return seg
        return None

    def latest_segmentation(self):
        return self.segmentations[-1][1] if self.segmentations else None

    def report(self) -> dict:
        return {
            "calls": dict(self.calls),
            "rsa_sigmas": list(self.stage_sigmas[keys.STAGE_RSA]),
            "rba_sigmas": list(self.stage_sigmas[keys.STAGE_RBA]),
            "segmentation_sigmas": [s for s, _ in self.label_history],
            "label_history": [(sigma, labels.cpu()) for sigma, labels in self.label_history],
            "segmentation": self.latest_segmentation(),
            "concept_names": self.plan.concept_names,
            "attention": self.attention_record,
        }

    def tail(self):
        """RunTail of this run, None if it never segmented."""
        if not self.segmentations:
            return None
        return RunTail(self.last_sigma, self.frame_hw, tuple(self.segmentations), tuple(self.segmented_rows))

    def continue_from(self, tail: RunTail):
        """Start from an earlier run's segmentations (its noise levels are all above this run's)."""
        self.segmentations = list(tail.segmentations)
        self.segmented_rows = list(tail.segmented_rows)
        self.frame_hw = tail.frame_hw

    def note_cfg_hook_ran(self):
        """The semantic CFG hook ran for the current step (the post-CFG backstop then stays idle)."""
        self.cfg_hook_ran = True

    def take_cfg_hook_ran(self) -> bool:
        """Whether the CFG hook ran since the last call; resets it for the next step."""
        ran, self.cfg_hook_ran = self.cfg_hook_ran, False
        return ran

    def keep_attention_record(self, record):
        """The attention of the last injected call, for the Attention Map node."""
        self.attention_record = record

    def release_references(self):
        self.reference_kv.clear()
        self.reference_windows.clear()
        self.reference_step = None

    def release(self):
        self.release_references()
        self._split_half = None
        self.attention_record = None
        self.segmentations.clear()
        self.label_history.clear()
        self._cache.clear()
