"""MagicFace Concept From Folder: concepts laid out like the reference code's data directory.

<input>/<folder>/image/<name>.jpg and <input>/<folder>/mask/<name>.jpg (matching names). Only
folders inside ComfyUI's input directory are listed and opened.
"""
import os

import numpy as np
import torch
from PIL import Image, ImageOps

import folder_paths

from ..comfy_glue import keys
from ..comfy_glue.concepts import ConceptList
from ..comfy_glue.errors import MagicFaceInputError
from .concept_loader import MAX_WEIGHT, build_concept

NODE = "MagicFace Concept From Folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def concept_folders():
    root = folder_paths.get_input_directory()
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root)
                  if os.path.isdir(os.path.join(root, name, "image")) and os.path.isdir(os.path.join(root, name, "mask")))


def _inside(root, path):
    root, path = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([root, path]) == root


def _find(directory, name):
    for extension in IMAGE_EXTENSIONS:
        path = os.path.join(directory, name + extension)
        if os.path.isfile(path):
            return path
    return None


def _read(path, mode):
    with Image.open(path) as picture:
        picture = ImageOps.exif_transpose(picture).convert(mode)
        return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)


class MagicFaceConceptFromFolder:
    CATEGORY = "MagicFace"
    FUNCTION = "load"
    RETURN_TYPES = (keys.CONCEPTS_TYPE, "IMAGE", "MASK")
    RETURN_NAMES = ("concepts", "image", "mask")
    DESCRIPTION = "Load a concept from a reference-code style folder in ComfyUI's input directory."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": (concept_folders(), {"tooltip": "A folder of ComfyUI/input holding image/ and mask/."}),
                "name": ("STRING", {"default": "man", "tooltip": "File name (without extension) in image/ and mask/."}),
                "words": ("STRING", {"default": "", "tooltip": "Prompt word(s) of the concept. Empty: the file name."}),
                "weight": ("FLOAT", {"default": 3.0, "min": 0.0, "max": MAX_WEIGHT, "step": 0.1}),
            },
            "optional": {
                "reference_prompt": ("STRING", {"default": ""}),
                "previous": (keys.CONCEPTS_TYPE,),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, folder, name, **_):
        try:
            cls._paths(folder, name)
        except MagicFaceInputError as error:
            return str(error)
        return True

    @staticmethod
    def _paths(folder, name):
        root = folder_paths.get_input_directory()
        base = os.path.join(root, folder)
        if not folder or os.sep in name or "/" in name or not _inside(root, base) or not _inside(base, os.path.join(base, name)):
            raise MagicFaceInputError(NODE, "folder", f"'{folder}/{name}' is outside ComfyUI's input directory.",
                                      "pick a folder listed in the dropdown and a plain file name.")
        image = _find(os.path.join(base, "image"), name)
        mask = _find(os.path.join(base, "mask"), name)
        if image is None or mask is None:
            raise MagicFaceInputError(NODE, "name", f"no image/{name}.* and mask/{name}.* pair in '{folder}'.",
                                      "use a name present in both image/ and mask/ (jpg, png or webp).")
        return image, mask

    def load(self, folder, name, words, weight, reference_prompt="", previous=None):
        image_path, mask_path = self._paths(folder, name)
        image, mask = _read(image_path, "RGB")[None], _read(mask_path, "L")[None]
        concept = build_concept(image, mask, words or name, weight, reference_prompt, NODE, source=f"{folder}/{name}")
        return (previous or ConceptList()).extended(concept), image, mask
