"""API-format workflow builders and loaders shared by tests and scripts/demo."""
from __future__ import annotations

import json
from pathlib import Path

CHECKPOINT_PLACEHOLDER = "$CHECKPOINT"


def txt2img(ckpt_name: str, width: int = 128, height: int = 128, steps: int = 2, seed: int = 0,
            batch_size: int = 1, prefix: str = "magicface_test",
            positive: str = "a portrait photo of a woman, oil painting",
            negative: str = "blurry") -> dict:
    """CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage ->
    KSampler -> VAEDecode -> SaveImage.  Node "9" is the SaveImage node."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": width, "height": height, "batch_size": batch_size}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "3": {"class_type": "KSampler",
              "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
                         "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                         "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def load_workflow(path: Path, ckpt_name: str) -> dict:
    """Load an API-format workflow JSON and point it at ``ckpt_name``.

    Any string input equal to ``$CHECKPOINT`` and every ``ckpt_name`` input is
    replaced, so a workflow file from ``workflows/api/`` can run on the tiny
    checkpoint unchanged.
    """
    prompt = json.loads(Path(path).read_text())
    for node in prompt.values():
        inputs = node.get("inputs", {})
        for key, value in inputs.items():
            if value == CHECKPOINT_PLACEHOLDER or key == "ckpt_name":
                inputs[key] = ckpt_name
    return prompt
