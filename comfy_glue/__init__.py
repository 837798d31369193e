"""ComfyUI glue of MagicFace: the one layer that knows about ModelPatcher and its hooks."""
