"""MagicFace Apply's work: validate the inputs, prepare references, build the plan, patch a clone."""
import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import keys
from .auto_mask import with_estimated_masks
from .errors import MagicFaceInputError
from .host import (context_width, diffusion_model_of, is_sdxl, model_sampling_of, nothing_known_concat,
                   predicts_velocity, to_model_latent, unet_input_channels)
from .layers import list_attention_layers, select_injection_layers, select_segmentation_layers
from .patch import MagicFacePatch
from .plan import MagicFacePlan
from .probe import MagicFaceProbe
from .reference_frame import fitted, squashed
from .tokens import locate_concept_tokens
from ..magicface_attn import reference_mode_mask

log = logging.getLogger("MagicFace")
NODE = "MagicFace Apply"
LATENT_STRIDE = 8
# Native training sizes, used when reference_size is 0 (auto).
NATIVE_SIZE_SDXL, NATIVE_SIZE_V, NATIVE_SIZE_DEFAULT = 1024, 768, 512


def native_size(model_patcher) -> int:
    if is_sdxl(model_patcher):
        return NATIVE_SIZE_SDXL
    return NATIVE_SIZE_V if predicts_velocity(model_patcher) else NATIVE_SIZE_DEFAULT


def encode_text(clip, text):
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return cond, pooled


def _reference_images(concepts, size, mask_mode):
    if mask_mode == keys.MASK_MODE_REFERENCE:
        return torch.stack([squashed(c.image, size) for c in concepts])
    return torch.stack([fitted(c.image, size, "replicate") for c in concepts])


def _reference_latents(model_patcher, vae, images):
    with torch.no_grad():
        latents = vae.encode(images[..., :3])
    return to_model_latent(model_patcher, latents.float()).cpu()


def _reference_concat(model_patcher, latents):
    """The references' extra input channels on UNets that take more than the latent (inpainting
    checkpoints): nothing of them is known, as in text-to-image, so their features form at
    the target's noise level like those of a plain checkpoint."""
    base = model_patcher.model
    extra = unet_input_channels(base, latents.shape[1]) - latents.shape[1]
    if extra == 0:
        return None
    concat = nothing_known_concat(base, latents)
    if concat is None or concat.shape[1] != extra:
        raise MagicFaceInputError(
            NODE, "model", f"this UNet takes {extra} input channels besides the latent, which MagicFace cannot "
            "fill for the references (it knows inpainting checkpoints' mask and masked image).",
            "use a text-to-image or inpainting SD1.x, SD2.x or SDXL checkpoint.")
    return concat.float().cpu()


def _reference_masks(concepts, size, mask_mode):
    if mask_mode == keys.MASK_MODE_REFERENCE:
        # The reference code binarises the 8-bit mask (only 255 survives) and squashes it to 128x128.
        return torch.stack([reference_mode_mask((c.mask * 255).round().to(torch.uint8)) for c in concepts])
    return torch.stack([fitted(c.mask[..., None], size, "constant")[..., 0] for c in concepts])


def _reference_context(clip, concepts):
    contexts, pooled = [], []
    for concept in concepts:
        cond, pool = encode_text(clip, concept.reference_prompt)
        contexts.append(cond[0])
        pooled.append(None if pool is None else pool.reshape(-1))
    length = max(c.shape[0] for c in contexts)
    # Prompts longer than 77 tokens give longer contexts: repeat the shorter ones, as ComfyUI does.
    contexts = [c.repeat(length // c.shape[0], 1) if length % c.shape[0] == 0 else
                F.pad(c, (0, 0, 0, length - c.shape[0])) for c in contexts]
    pooled_stack = None if any(p is None for p in pooled) else torch.stack(pooled)
    return torch.stack(contexts).cpu(), pooled_stack


def _validate_model(model_patcher):
    diffusion_model = diffusion_model_of(model_patcher)
    layers = list_attention_layers(diffusion_model) if diffusion_model is not None else []
    if not layers:
        raise MagicFaceInputError(
            NODE, "model", f"{type(diffusion_model).__name__} is not a UNet with attention blocks "
            "(MagicFace supports SD1.x, SD2.x and SDXL; Flux, SD3 and other transformer models are not supported yet).",
            "connect an SD1.x, SD2.x or SDXL checkpoint.")
    return layers


def _validate_clip(model_patcher, cond):
    width = context_width(model_patcher)
    if width is not None and cond.shape[-1] != width:
        raise MagicFaceInputError(
            NODE, "clip", f"its text features are {cond.shape[-1]} wide, but this model's cross-attention "
            f"takes {width}: the CLIP belongs to another model family.",
            "connect the CLIP output of the same checkpoint as the model (SD1.x: 768, SD2.x: 1024, SDXL: 2048).")


@dataclass(frozen=True)
class ReferenceBatch:
    """Every concept's reference, ready for the UNet, in concept order: images (R, S, S, 3) in
    the square frame of side `size` (None where no picture exists, as in the bench), in which
    the concepts' masks are laid too; latents (R, C, h, w) in model space; context (R, T, C_ctx)
    and pooled (R, C_pool) or None of the reference prompts; concat (R, C_extra, h, w) or None."""
    images: Optional[torch.Tensor]
    latents: torch.Tensor
    context: torch.Tensor
    pooled: Optional[torch.Tensor]
    concat: Optional[torch.Tensor]
    size: int


def _reference_batch(model, clip, vae, concepts, size, mask_mode) -> ReferenceBatch:
    context, pooled = _reference_context(clip, concepts)
    images = _reference_images(concepts, size, mask_mode)
    latents = _reference_latents(model, vae, images)
    return ReferenceBatch(images, latents, context, pooled, _reference_concat(model, latents), size)


def _with_masks(model, clip, sampling, concepts, references, segmentation, mask_mode, seed):
    """Concepts without a mask get their estimate; reference mode keeps the published rules,
    where a concept without a mask is the whole image."""
    if mask_mode == keys.MASK_MODE_REFERENCE:
        for concept in concepts:
            if concept.auto_mask is not None:
                log.info("[MagicFace Apply] reference mode: concept '%s' has no mask and uses the whole image.",
                         concept.words)
        return tuple(concepts)
    return with_estimated_masks(model, clip, sampling, tuple(concepts), references, segmentation, seed)


def _silent_concepts(concepts) -> int:
    """How many concepts put nothing of their reference into the attention (empty mask or weight 0);
    each is logged, since the user probably did not mean it."""
    silent = 0
    for concept in concepts:
        if concept.mask_is_empty:
            log.warning("[MagicFace Apply] concept '%s' has an empty mask: its reference contributes nothing.",
                        concept.words)
        elif concept.weight == 0:
            log.warning("[MagicFace Apply] concept '%s' has weight 0: its reference contributes nothing.",
                        concept.words)
        silent += concept.mask_is_empty or concept.weight == 0
    return silent


def _chosen_layers(model, schedule):
    """(injection layers, segmentation layers) of this model under the schedule."""
    layers = _validate_model(model)
    injection = select_injection_layers(layers, schedule.layers, schedule.custom_layers)
    if not injection:
        raise MagicFaceInputError(NODE, "schedule", "the chosen layers match no self-attention of this model.",
                                  "use the 'paper' or 'all decoder' preset, or list existing layers.")
    segmentation = select_segmentation_layers(layers, schedule.levers()[1])
    if not segmentation:
        raise MagicFaceInputError(NODE, "model", "this UNet has no text cross-attention, which the segmentation "
                                  "needs.", "use an SD1.x, SD2.x or SDXL checkpoint.")
    return injection, segmentation


def build_plan(model, concepts, schedule, references, concept_tokens, seed=0, prompt_context=None,
               reference_noise=keys.REFERENCE_NOISE_PER_LEVEL) -> MagicFacePlan:
    """The MagicFacePlan of these concepts (with their final masks) under this schedule: the one
    place where the schedule's rules are resolved (layer presets, automatic ca_scale, speed
    preset, fractions to noise levels). MagicFace Apply builds its plan here, and so do the
    bench and the tests that bring random references instead of a CLIP and a VAE."""
    injection, segmentation = _chosen_layers(model, schedule)
    sampling = model_sampling_of(model)

    def sigma_of(fraction):
        return float(sampling.percent_to_sigma(float(fraction)))
    return MagicFacePlan(
        injection_layers=tuple(injection), segmentation_layers=tuple(segmentation),
        reference_latents=references.latents, reference_concat=references.concat, reference_images=references.images,
        reference_masks=_reference_masks(concepts, references.size, schedule.mask_mode), mask_mode=schedule.mask_mode,
        weights=tuple(float(c.weight) for c in concepts), reference_context=references.context,
        reference_pooled=references.pooled,
        concept_tokens=tuple(tuple(t) for t in concept_tokens), concept_names=tuple(c.words for c in concepts),
        ca_scale=schedule.resolved_ca_scale(len(concepts)), semantic_cfg=bool(schedule.semantic_cfg),
        sigma_start=sigma_of(schedule.start_at), sigma_switch=sigma_of(schedule.switch_at),
        sigma_end=sigma_of(schedule.end_at), seed=int(seed), reference_every=schedule.levers()[0],
        prompt_context=prompt_context, reference_noise=reference_noise)


def apply_magicface(model, clip, vae, concepts, prompt, schedule, seed=0, reference_size=0,
                    reference_noise=keys.REFERENCE_NOISE_PER_LEVEL):
    """Returns (patched clone, positive CONDITIONING of the prompt, its MagicFaceProbe or None)."""
    if not prompt.strip():
        raise MagicFaceInputError(NODE, "prompt", "the prompt is empty.",
                                  "type the target prompt, with each concept's word in it.")
    if len(concepts) == 0:
        log.warning("[MagicFace Apply] no concept connected: MagicFace is off, the model is returned unchanged.")
        cond, pooled = encode_text(clip, prompt)
        return model.clone(), [[cond, {"pooled_output": pooled}]], None
    _, segmentation = _chosen_layers(model, schedule)  # refused here, before anything is encoded
    concept_tokens = locate_concept_tokens(clip.tokenize, prompt, [c.words for c in concepts])
    cond, pooled = encode_text(clip, prompt)
    _validate_clip(model, cond)
    conditioning = [[cond, {"pooled_output": pooled}]]

    size = int(reference_size) or native_size(model)
    if size % (LATENT_STRIDE * 8):
        raise MagicFaceInputError(NODE, "reference_size", f"{size} is not a multiple of 64.",
                                  "use 0 (auto) or a multiple of 64 such as 512 or 1024.")
    references = _reference_batch(model, clip, vae, concepts, size, schedule.mask_mode)
    concepts = _with_masks(model, clip, model_sampling_of(model), concepts, references, segmentation,
                           schedule.mask_mode, seed)
    if _silent_concepts(concepts) == len(concepts) and not schedule.semantic_cfg:
        log.warning("[MagicFace Apply] every concept has an empty mask or weight 0 and semantic CFG is off: "
                    "the model is returned unpatched.")
        return model.clone(), conditioning, None
    plan = build_plan(model, concepts, schedule, references, concept_tokens, seed, cond[0].cpu(), reference_noise)
    patched = model.clone()
    patch = MagicFacePatch(plan)
    patch.install(patched)
    return patched, conditioning, MagicFaceProbe(patch)
