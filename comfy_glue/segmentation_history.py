"""The segmentations of one run, by noise level: made at the end of each own call, read by RBA
at the next step, by semantic CFG at the same step and by the preview nodes after the run.

A step the host split into an uncond call and a cond call is segmented once, from both halves
joined as if they had come in one call.
"""
import torch

from .batch_rows import SEG_COND, SEG_PAIRS, SEG_UNCOND, stack_elements
from .layers import layer_hw
from .noise_levels import same_sigma
from ..magicface_attn import segment

KEPT_SEGMENTATIONS = 3  # only the current and the previous step are ever read back


def join_halves(uncond, cond):
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


class SegmentationHistory:
    """plan: the run's MagicFacePlan (concept tokens, ca_scale); constants: the run's device
    constants (magicface_attn.device_constants)."""

    def __init__(self, plan, constants, segmentations=()):
        self.plan = plan
        self._constants = constants
        self._segmentations = list(segmentations)  # [(sigma, [Segmentation per batch element])]
        self._labels = []       # [(sigma, (E, Hs, Ws) long labels)]: small, kept for the previews
        self._split_half = None  # (sigma, SEG_COND | SEG_UNCOND, maps) of a split step's first half

    @property
    def segmentations(self) -> tuple:
        return tuple(self._segmentations)

    def finish(self, call):
        """This noise level's segmentation from the maps a call's segmentation layers queued."""
        propagated = call.propagation.maps()
        if not propagated:
            return False
        layout = call.rows.seg_layout
        if layout != SEG_PAIRS:
            propagated, layout = self._joined_with_other_half(call.sigma, layout, propagated)
            if propagated is None:
                return False  # the cond half makes the segmentation
        self._segment(propagated, layout == SEG_PAIRS, call.sigma, call.latent_hw)
        return True

    def _joined_with_other_half(self, sigma, layout, propagated):
        """(maps, layout) of a half of a split step: joined with the other half where it came
        first, else as it is (a cond half alone), or (None, layout) for an uncond half to keep."""
        # A copy of the list: the call's queue clears its own when the call ends.
        other, self._split_half = self._split_half, (sigma, layout, list(propagated))
        if other is not None and same_sigma(other[0], sigma) and other[1] != layout:
            halves = {layout: propagated, other[1]: other[2]}
            joined = join_halves(halves[SEG_UNCOND], halves[SEG_COND])
            if joined is not None:
                self._split_half = None
                return joined, SEG_PAIRS
        return (None if layout == SEG_UNCOND else propagated), layout

    def _segment(self, propagated, with_uncond: bool, sigma: float, latent_hw):
        elements = propagated[0][0].shape[1] // (2 if with_uncond else 1)  # maps: (L, rows, N, T)
        out_hw = layer_hw(latent_hw, 2)
        tokens = [list(t) for t in self.plan.concept_tokens]
        per_element = []
        for element in range(elements):
            layer_maps = [(maps.unflatten(1, (elements, -1))[:, element], hw) for maps, hw in propagated]
            per_element.append(segment(layer_maps, out_hw, tokens, self.plan.ca_scale, constants=self._constants))
        self._segmentations = [(s, seg) for s, seg in self._segmentations if not same_sigma(s, sigma)]
        self._segmentations.append((sigma, per_element))
        del self._segmentations[:-KEPT_SEGMENTATIONS]
        # Kept on the device: moving them to the CPU here would synchronise every step.
        self._labels = [(s, labels) for s, labels in self._labels if not same_sigma(s, sigma)]
        self._labels.append((sigma, stack_elements([seg.labels for seg in per_element])))

    def before(self, sigma: float):
        """Newest segmentation computed at a higher noise level (the previous step), or None."""
        earlier = [(s, seg) for s, seg in self._segmentations if s > sigma and not same_sigma(s, sigma)]
        return min(earlier, key=lambda item: item[0])[1] if earlier else None

    def at(self, sigma: float):
        for s, seg in reversed(self._segmentations):
            if same_sigma(s, sigma):
                return seg
        return None

    def latest(self):
        return self._segmentations[-1][1] if self._segmentations else None

    def label_history(self) -> list:
        """[(sigma, (E, Hs, Ws) long labels on the CPU)] of every segmented step, in order."""
        return [(sigma, labels.cpu()) for sigma, labels in self._labels]

    def segmented_sigmas(self) -> list:
        return [sigma for sigma, _ in self._labels]

    def clear(self):
        self._segmentations.clear()
        self._labels.clear()
        self._split_half = None
