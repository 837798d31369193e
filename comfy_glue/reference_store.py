"""The references' keys and values of one run, per injection layer, and when they are due anew.

The attention hooks make them (from the references' own pass or their rows in a coupled call)
with the masks this store lays out at each layer grid, put them here and read them back at
the same layer.
"""
from typing import NamedTuple

import torch

from . import keys
from .layers import layer_hw
from ..magicface_attn import RESIZE_AREA, RESIZE_NEAREST, mask_to_layer, pack_layout

# How each mask mode brings the reference masks to a layer grid: reference mode follows the
# published code (nearest samples); area mode keeps thin and soft masks.
LAYER_RESIZE_OF_MASK_MODE = {keys.MASK_MODE_REFERENCE: RESIZE_NEAREST, keys.MASK_MODE_AREA: RESIZE_AREA}


class LayerMasks(NamedTuple):
    """The reference masks at one layer: grid (h, w) of its keys; window (top, left, h, w) of
    the references in it; masks (R, h*w) float, zero outside the window; layout: their
    magicface_attn.PackLayout (which keys each concept keeps)."""
    grid: tuple
    window: tuple
    masks: torch.Tensor
    layout: object


class ReferenceStore:
    """plan: the run's MagicFacePlan (masks, weights, reference_every); cached: the run's
    per-run cache (MagicFaceRun.cached), where the mask layouts of each grid are kept."""

    def __init__(self, plan, cached):
        self.plan = plan
        self._cached = cached
        self._kv = {}          # layer key -> magicface_attn.ReferenceKV
        self._windows = {}     # layer key -> (keys grid (h, w), (top, left, h, w) of the references)
        self._made_at = None   # the run's step count when the stored features were made

    def __len__(self):
        return len(self._kv)

    def due(self, step_count: int) -> bool:
        """Whether the call of this step computes the references' features, or reuses those of
        an earlier step (plan.reference_every > 1, the approximate mode)."""
        return not self._kv or step_count - self._made_at >= self.plan.reference_every

    def made(self, step_count: int):
        self._made_at = step_count

    def kv(self, layer_key):
        """The ReferenceKV of one injection layer, or None before its features exist."""
        return self._kv.get(layer_key)

    def window(self, layer_key):
        """(keys grid (h, w), (top, left, h, w) of the references in it) of one layer."""
        return self._windows[layer_key]

    def layer_masks(self, layer, frame_hw, box, device) -> LayerMasks:
        """The reference masks at one layer's grid, for keys computed on the latent grid
        frame_hw with the references at box (a Letterbox; None: they fill it). Made once per
        run, grid and window (one host sync each)."""
        grid = layer_hw(frame_hw, layer.factor)
        window = (0, 0) + grid if box is None else box.window(layer.factor)
        return self._cached(("mask layout", grid, window, device), lambda: self._layer_masks(grid, window, device))

    def _layer_masks(self, grid, window, device) -> LayerMasks:
        top, left, height, width = window
        masks = mask_to_layer(self.plan.reference_masks.to(device), height, width,
                              mode=LAYER_RESIZE_OF_MASK_MODE[self.plan.mask_mode])
        if (height, width) != tuple(grid):
            framed = masks.new_zeros(masks.shape[0], *grid)
            framed[:, top:top + height, left:left + width] = masks.reshape(-1, height, width)
            masks = framed.reshape(masks.shape[0], -1)
        return LayerMasks(grid, window, masks, pack_layout(masks, self.plan.weights, device))

    def put(self, layer_key, kv, masks: LayerMasks):
        """kv: the layer's magicface_attn.ReferenceKV, made with `masks`."""
        self._kv[layer_key] = kv
        self._windows[layer_key] = (masks.grid, masks.window)

    def clear(self):
        """Drops every stored feature (the next call makes them anew)."""
        self._kv.clear()
        self._windows.clear()
        self._made_at = None
