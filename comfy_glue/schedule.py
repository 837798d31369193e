"""The Stage Scheduler's settings, travelling to MagicFace Apply (MAGICFACE_SCHEDULE)."""
from dataclasses import dataclass

from . import keys
from ..magicface_attn import CA_SCALE_MULTI_CONCEPT, CA_SCALE_SINGLE_CONCEPT


@dataclass(frozen=True)
class StageSchedule:
    """When and where RSA and RBA run. Fractions are of the sampling schedule (0 = first step).

    The default switch 0.42 puts the reference code's switch (RSA on steps 0..20 of 50,
    RBA from step 21) at the same noise level: ComfyUI converts fractions to sigmas with
    the model's own model_sampling.percent_to_sigma.
    """
    switch_at: float = 0.42
    start_at: float = 0.0
    end_at: float = 1.0
    layers: str = keys.LAYER_PRESET_PAPER
    custom_layers: str = ""
    ca_scale: float = 0.0          # 0 = automatic: 0.9 for one concept, 0.6 for several (reference advice)
    semantic_cfg: bool = True
    mask_mode: str = keys.MASK_MODE_AREA
    speed: str = keys.SPEED_EXACT
    reference_every: int = keys.REFERENCE_EVERY_FROM_SPEED  # steps between fresh reference features
    segmentation_layers: str = keys.SEGMENTATION_FROM_SPEED

    def levers(self) -> tuple:
        """(reference_every, segmentation layer set): the speed preset's, each unless set."""
        every, layer_set = keys.SPEED_LEVERS[self.speed]
        if self.reference_every != keys.REFERENCE_EVERY_FROM_SPEED:
            every = int(self.reference_every)
        if self.segmentation_layers != keys.SEGMENTATION_FROM_SPEED:
            layer_set = self.segmentation_layers
        return every, layer_set

    def resolved_ca_scale(self, concept_count: int) -> float:
        if self.ca_scale > 0:
            return float(self.ca_scale)
        return CA_SCALE_SINGLE_CONCEPT if concept_count == 1 else CA_SCALE_MULTI_CONCEPT
