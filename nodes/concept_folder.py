"""MagicFace Concept From Folder: concepts laid out like the reference code's data directory.

<input>/<folder>/image/<name>.jpg and, optionally, <input>/<folder>/mask/<name>.jpg (matching
names; without it the mask is estimated or the whole image, as mask_source says). The
dropdown lists the folders of ComfyUI's input directory that hold image/, links among
them (a link placed in input/ is the user's choice), and only a listed folder is opened; its
files must lie inside it (resolved), so a link inside image/ or mask/ cannot lead elsewhere.
"""
import os

import numpy as np
import torch
from PIL import Image, ImageOps

import folder_paths

from ..comfy_glue import keys
from ..comfy_glue.concepts import ConceptList
from ..comfy_glue.errors import MagicFaceInputError
from .concept_loader import MAX_WEIGHT, auto_settings, build_concept, mask_source_inputs

NODE = "MagicFace Concept From Folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def concept_folders():
    root = folder_paths.get_input_directory()
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root)
                  if os.path.isdir(os.path.join(root, name, "image")))


def _plain(name):
    return bool(name) and name not in (".", "..") and not any(sep in name for sep in ("/", "\\", os.sep))


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
                "folder": (concept_folders(), {"tooltip": "A folder of ComfyUI/input holding image/ (and mask/)."}),
                "name": ("STRING", {"default": "man", "tooltip": "File name (without extension) in image/ (and mask/)."}),
                "words": ("STRING", {"default": "", "tooltip": "Prompt word(s) of the concept. Empty: the file name."}),
                "weight": ("FLOAT", {"default": 3.0, "min": 0.0, "max": MAX_WEIGHT, "step": 0.1}),
            },
            "optional": {
                "reference_prompt": ("STRING", {"default": ""}),
                "previous": (keys.CONCEPTS_TYPE,),
                **mask_source_inputs(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, folder):
        try:
            cls._folder(folder)
        except MagicFaceInputError as error:
            return str(error)
        return True

    @staticmethod
    def _folder(folder):
        if not _plain(folder) or folder not in concept_folders():
            raise MagicFaceInputError(NODE, "folder", f"'{folder}' is not a concept folder of ComfyUI's input "
                                      "directory.", "pick a folder listed in the dropdown (a folder of input/ "
                                      "holding image/).")
        return os.path.join(folder_paths.get_input_directory(), folder)

    @classmethod
    def _paths(cls, folder, name):
        base = cls._folder(folder)
        if not _plain(name):
            raise MagicFaceInputError(NODE, "name", f"'{name}' is not a plain file name.",
                                      "type the name of a file in image/ and mask/, without folders (e.g. 'man').")
        image = _find(os.path.join(base, "image"), name)
        mask = _find(os.path.join(base, "mask"), name)
        if image is None:
            raise MagicFaceInputError(NODE, "name", f"no image/{name}.* in '{folder}'.",
                                      "use the name of a file in image/ (jpg, png or webp), without extension.")
        if not (_inside(base, image) and (mask is None or _inside(base, mask))):
            raise MagicFaceInputError(NODE, "name", f"'{folder}/{name}' links to a file outside '{folder}'.",
                                      "put the image and mask files themselves into image/ and mask/.")
        return image, mask

    def load(self, folder, name, words, weight, reference_prompt="", previous=None,
             mask_source=keys.MASK_SOURCE_AUTO, auto_threshold=0.5, auto_grow=0, auto_feather=0.0):
        image_path, mask_path = self._paths(folder, name)
        image = _read(image_path, "RGB")[None]
        mask = None if mask_path is None else _read(mask_path, "L")[None]
        settings = auto_settings(type(self), NODE, auto_threshold, auto_grow, auto_feather)
        concept = build_concept(image, mask, words or name, weight, reference_prompt, NODE, f"{folder}/{name}",
                                mask_source, settings)
        # The MASK output is the folder's mask; an estimated one shows in MagicFace Mask Preview.
        return (previous or ConceptList()).extended(concept), image, concept.mask[None]
