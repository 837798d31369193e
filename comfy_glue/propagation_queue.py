"""Cross-attention maps and their smoothed propagation, batched across layers of one grid.

Doing both one layer at a time costs about fifteen small kernels per layer, and SDXL has 70
segmentation layers: on a GPU those launches, not the arithmetic, are the cost. Layers with
the same grid, width and head count are stacked along the batch and processed together, at
most MAX_LAYERS_PER_BATCH at a time to bound the memory held for them.
"""
import torch

from ..magicface_attn import propagate_cross_maps

MAX_LAYERS_PER_BATCH = 16


class PropagationQueue:
    """Per-call queue; maps come out as [(maps (L, rows, N, T) float32, (h, w))], L layers of
    one grid in each (segment takes them so, without copying them apart and together again).
    constants: the run's device constants (magicface_attn.device_constants)."""

    def __init__(self, constants=None):
        self._constants = constants
        self._groups = {}
        self._maps = []

    def add(self, q_self, k_self, q_cross, k_text, heads: int, hw):
        """q_self, k_self, q_cross: (rows, N, C) self-attention queries/keys and cross-attention
        queries of one layer; k_text: (rows, T, C) its text keys."""
        key = (tuple(hw), q_self.shape[-1], k_text.shape[1], heads)
        group = self._groups.setdefault(key, [])
        group.append((q_self, k_self, q_cross, k_text))
        if len(group) >= MAX_LAYERS_PER_BATCH:
            self._flush(key)

    def _flush(self, key):
        hw, _, _, heads = key
        group = self._groups.pop(key)
        rows = group[0][0].shape[0]
        # A lone layer is used as it is: cat would copy it.
        q_self, k_self, q_cross, k_text = (parts[0] if len(parts) == 1 else torch.cat(parts) for parts in zip(*group))
        maps = propagate_cross_maps(q_self, k_self, q_cross, k_text, heads, constants=self._constants)
        self._maps.append((maps.unflatten(0, (len(group), rows)), hw))

    def maps(self):
        for key in list(self._groups):
            self._flush(key)
        return self._maps

    def clear(self):
        self._groups.clear()
        self._maps.clear()
