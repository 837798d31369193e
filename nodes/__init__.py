"""MagicFace nodes: small classes, no math. The math is in magicface_attn, the hooks in comfy_glue."""
from .attention_map import MagicFaceAttentionMap
from .concept_folder import MagicFaceConceptFromFolder
from .concept_loader import MagicFaceConceptLoader
from .concept_mask import MagicFaceConceptMask
from .magicface_apply import MagicFaceApply
from .mask_preview import MagicFaceMaskPreview
from .previews import MagicFaceSegmentationPreview, MagicFaceSegmentationSteps
from .stage_scheduler import MagicFaceStageScheduler

NODE_CLASS_MAPPINGS = {
    "MagicFaceConceptLoader": MagicFaceConceptLoader,
    "MagicFaceConceptFromFolder": MagicFaceConceptFromFolder,
    "MagicFaceConceptMask": MagicFaceConceptMask,
    "MagicFaceStageScheduler": MagicFaceStageScheduler,
    "MagicFaceApply": MagicFaceApply,
    "MagicFaceMaskPreview": MagicFaceMaskPreview,
    "MagicFaceSegmentationPreview": MagicFaceSegmentationPreview,
    "MagicFaceSegmentationSteps": MagicFaceSegmentationSteps,
    "MagicFaceAttentionMap": MagicFaceAttentionMap,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MagicFaceConceptLoader": "MagicFace Concept Loader",
    "MagicFaceConceptFromFolder": "MagicFace Concept From Folder",
    "MagicFaceConceptMask": "MagicFace Concept Mask",
    "MagicFaceStageScheduler": "MagicFace Stage Scheduler",
    "MagicFaceApply": "MagicFace Apply",
    "MagicFaceMaskPreview": "MagicFace Mask Preview",
    "MagicFaceSegmentationPreview": "MagicFace Segmentation Preview",
    "MagicFaceSegmentationSteps": "MagicFace Segmentation Steps",
    "MagicFaceAttentionMap": "MagicFace Attention Map",
}
