"""API-format MagicFace graphs used by the server and in-process graph tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def write_synthetic_reference(input_dir: Path, seed: int = 0) -> tuple:
    """A random reference image and a rectangle mask as files ComfyUI's LoadImage can open."""
    rng = np.random.default_rng(seed)
    image = (rng.random((96, 80, 3)) * 255).astype(np.uint8)
    mask = np.zeros((96, 80), np.uint8)
    mask[20:76, 20:60] = 255
    names = (f"mf_ref_{seed}.png", f"mf_mask_{seed}.png")
    Image.fromarray(image).save(input_dir / names[0])
    Image.fromarray(mask).save(input_dir / names[1])
    return names


def copy_example(examples_dir: Path, input_dir: Path, name: str) -> str:
    target = input_dir / name
    if not target.exists():
        shutil.copytree(examples_dir / name, target)
    return name


def _tail(ckpt_name, model_ref, positive_ref, prompt_negative="blurry", size=128, steps=3, seed=0, prefix="mf"):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "20": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt_negative, "clip": ["1", 1]}},
        "21": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "22": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model_ref, "positive": positive_ref, "negative": ["20", 0], "latent_image": ["21", 0]}},
        "23": {"class_type": "VAEDecode", "inputs": {"samples": ["22", 0], "vae": ["1", 2]}},
        "24": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["23", 0]}},
    }


def plain_graph(ckpt_name: str, prompt: str, **kwargs) -> dict:
    graph = _tail(ckpt_name, ["1", 0], ["10", 0], **kwargs)
    graph["10"] = {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}}
    return graph


def _apply(prompt, concepts_ref, reference_size=128):
    return {
        "8": {"class_type": "MagicFaceStageScheduler", "inputs": {
            "switch_at": 0.42, "start_at": 0.0, "end_at": 1.0, "layers": "paper", "custom_layers": "",
            "ca_scale": 0.0, "semantic_cfg": True, "mask_mode": "area"}},
        "9": {"class_type": "MagicFaceApply", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "prompt": prompt, "concepts": concepts_ref,
            "schedule": ["8", 0], "seed": 0, "reference_size": reference_size}},
    }


def single_concept_graph(ckpt_name: str, image: str, mask: str, words: str, prompt: str, **kwargs) -> dict:
    graph = _tail(ckpt_name, ["9", 0], ["9", 1], **kwargs)
    graph.update(_apply(prompt, ["5", 0]))
    graph.update({
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "LoadImage", "inputs": {"image": mask}},
        "4": {"class_type": "MagicFaceConceptMask", "inputs": {
            "threshold": 0.5, "threshold_mode": "value", "grow": 0, "feather": 0.0, "invert": False,
            "mask_image": ["3", 0], "reference_image": ["2", 0]}},
        "5": {"class_type": "MagicFaceConceptLoader", "inputs": {
            "image": ["2", 0], "mask": ["4", 0], "words": words, "weight": 3.0, "reference_prompt": ""}},
    })
    return graph


def folder_concepts_graph(ckpt_name: str, folder: str, names, words, weights, prompt: str, **kwargs) -> dict:
    graph = _tail(ckpt_name, ["9", 0], ["9", 1], **kwargs)
    previous = None
    for index, (name, word, weight) in enumerate(zip(names, words, weights)):
        inputs = {"folder": folder, "name": name, "words": word, "weight": weight, "reference_prompt": ""}
        if previous is not None:
            inputs["previous"] = previous
        graph[str(30 + index)] = {"class_type": "MagicFaceConceptFromFolder", "inputs": inputs}
        previous = [str(30 + index), 0]
    graph.update(_apply(prompt, previous))
    return graph
