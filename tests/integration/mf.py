"""Helpers for MagicFace integration tests: node calls in-process and API-format graphs."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PAUL_WORDS = ("man", "hat", "sunglasses")
PAUL_WEIGHTS = (2.5, 2.0, 2.0)
PAUL_PROMPT = "a man with a hat wearing a sunglasses"


def node(name):
    import nodes
    return nodes.NODE_CLASS_MAPPINGS[name]()


def run_node(name, **inputs):
    """Outputs of a host node by its input names, whichever node API the host's version of it
    has: FUNCTION on an instance (2024 host) or the classmethod execute (newer hosts)."""
    import nodes
    node_class = nodes.NODE_CLASS_MAPPINGS[name]
    if hasattr(node_class, "FUNCTION"):
        return getattr(node_class(), node_class.FUNCTION)(**inputs)
    output = node_class.execute(**inputs)
    return output if isinstance(output, tuple) else tuple(output.result)


def pack_module(submodule: str):
    """A module of the pack as ComfyUI imported it (hosts name the package differently)."""
    import importlib

    import nodes
    package = nodes.NODE_CLASS_MAPPINGS["MagicFaceApply"].__module__.rsplit(".nodes.", 1)[0]
    return importlib.import_module(f"{package}.{submodule}")


def load_image(path: Path, mode="RGB") -> torch.Tensor:
    with Image.open(path) as picture:
        array = np.asarray(picture.convert(mode), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array)
    return tensor[None] if mode == "RGB" else tensor[None]


def synthetic_concept(seed: int, size=(96, 80)):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, *size, 3, generator=generator)
    mask = torch.zeros(1, *size)
    mask[:, size[0] // 5: size[0] * 4 // 5, size[1] // 4: size[1] * 3 // 4] = 1
    return image, mask


def two_concepts():
    """Two synthetic concepts, "man" and "photo", of different image sizes."""
    (image_a, mask_a), (image_b, mask_b) = synthetic_concept(11), synthetic_concept(12, size=(64, 64))
    return concepts_from([(image_a, mask_a, "man", 2.5), (image_b, mask_b, "photo", 2.0)])


def concepts_from(specs, previous=None):
    """specs: [(image, mask, words, weight)] -> MAGICFACE_CONCEPTS through the real loader node."""
    concepts = previous
    for image, mask, words, weight in specs:
        concepts = node("MagicFaceConceptLoader").load(image, words, weight, mask=mask, previous=concepts)[0]
    return concepts


def paul_concepts(examples_dir: Path, words=PAUL_WORDS):
    folder = examples_dir / "Paul"
    specs = []
    for name, word, weight in zip(PAUL_WORDS, words, PAUL_WEIGHTS):
        image = load_image(folder / "image" / f"{name}.jpg")
        mask_image = load_image(folder / "mask" / f"{name}.jpg")
        mask = node("MagicFaceConceptMask").make_mask(0.5, "value", 0, 0.0, False, mask_image=mask_image)[0]
        specs.append((image, mask, word, weight))
    return concepts_from(specs)


def schedule(**overrides):
    values = dict(switch_at=0.42, start_at=0.0, end_at=1.0, layers="paper", custom_layers="", ca_scale=0.0,
                  semantic_cfg=True, mask_mode="area")
    values.update(overrides)
    return node("MagicFaceStageScheduler").schedule(**values)[0]


def load_checkpoint(ckpt: Path):
    return node("CheckpointLoaderSimple").load_checkpoint(ckpt.name)[:3]


def encode(clip, text):
    return node("CLIPTextEncode").encode(clip, text)[0]


def sample(model, positive, negative, latent, steps=3, cfg=5.0, sampler="euler", scheduler="normal", seed=0,
           denoise=1.0):
    """KSampler's output samples; latent: a latent tensor, or a LATENT dict (e.g. with a noise_mask)."""
    import nodes
    latent = latent if isinstance(latent, dict) else {"samples": latent}
    return nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, positive, negative,
                                 latent, denoise=denoise)[0]["samples"]


def apply(model, clip, vae, concepts, prompt, sched=None, reference_size=128, seed=0):
    return node("MagicFaceApply").apply(model, clip, vae, prompt, concepts=concepts, schedule=sched or schedule(),
                                        seed=seed, reference_size=reference_size)


def injected_calls(report, stage):
    return {name: n for (kind, name), n in report["calls"].items() if kind == stage}


def assert_stage_counts(report, patch):
    """Each injection layer runs RSA once per call above the switch sigma and RBA once per call below it
    (except a first call that has no earlier segmentation to group regions by)."""
    names = {layer.name for layer in patch.plan.injection_layers}
    rsa, rba = injected_calls(report, "rsa"), injected_calls(report, "rba")
    expected_rba = len(report["rba_sigmas"]) - (0 if report["rsa_sigmas"] else 1)
    assert set(rsa) == (names if report["rsa_sigmas"] else set()), rsa
    assert set(rba) == (names if expected_rba else set()), rba
    assert all(n == len(report["rsa_sigmas"]) for n in rsa.values())
    assert all(n == expected_rba for n in rba.values())
    assert all(s > patch.plan.sigma_switch for s in report["rsa_sigmas"])
    assert all(s <= patch.plan.sigma_switch for s in report["rba_sigmas"])
    for layer in patch.plan.segmentation_layers:
        assert report["calls"][("segmentation", layer.name)] == len(report["rsa_sigmas"]) + len(report["rba_sigmas"])


def apply_with_other(tiny, other, other_first: bool, prompt="a photo of a man"):
    """(model, positive, patch): MagicFace Apply with one synthetic 'man' concept and another
    node's patch `other` (model -> model) on the same model, applied before or after it."""
    model, clip, vae = tiny
    image, mask = synthetic_concept(0)
    concepts = concepts_from([(image, mask, "man", 3.0)])
    if other_first:
        return apply(other(model), clip, vae, concepts, prompt)
    patched, positive, patch = apply(model, clip, vae, concepts, prompt)
    return other(patched), positive, patch


def reference_calls(patch):
    """(coupled, separate pass) reference computations so far."""
    calls = patch.report()["calls"]
    return calls.get(("references", "coupled"), 0), calls.get(("references", "separate pass"), 0)


@contextmanager
def separate_pass_only():
    """References through their own pass, never coupled into the target's call."""
    call_module = pack_module("comfy_glue.model_call")
    saved = call_module.can_couple
    call_module.can_couple = lambda *args, **kwargs: None
    try:
        yield
    finally:
        call_module.can_couple = saved


def patch_of(model):
    """The MagicFacePatch behind a model MagicFace Apply patched (its probe is read-only): the
    owner of the model's call wrapper, for tests of the run's lifecycle."""
    return model.model_options["model_function_wrapper"].patch


def holds_references(patch) -> bool:
    """Whether the patch's current run still holds reference features."""
    run = patch.active_run()
    return run is not None and len(run.references) > 0


def relative_difference(a, b) -> float:
    """|a - b| / |b| (L2 norms over all elements)."""
    return ((a - b).norm() / b.norm()).item()


def assert_close(a, b):
    """Equal up to the float rounding of a different batch size."""
    relative = relative_difference(a, b)
    assert relative < 1e-4, relative
