"""Per-call MagicFace state: what one model call tells the attention hooks it patches.

A CallContext travels to the hooks in transformer_options (keys.CALL_CONTEXT_KEY) and is
released when the call ends; an AttentionRecord is what the last injected call leaves for the
Attention Map preview.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch

from .propagation_queue import PropagationQueue


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
    run: object                     # the MagicFaceRun the call belongs to
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
    segment: bool = True            # this call makes its noise level's segmentation (not an extra pass)

    def __post_init__(self):
        self.propagation = PropagationQueue(self.run.device_constants)

    def release(self):
        self.pending_self.clear()
        self.propagation.clear()
        self.layer_regions.clear()
        self.layer_groups.clear()
        self.regions = None
