"""ComfyUI-MagicFace: training-free multi-concept human image customisation (arXiv 2408.07433).

ComfyUI imports this folder as a package; everything inside is imported relatively so the
pack's nodes/ never shadows ComfyUI's own nodes.py.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
