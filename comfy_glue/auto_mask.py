"""Concept masks estimated from the references' own attention, for concepts given without one.

MagicFace Apply runs the references that need a mask through the UNet under their own
prompts ("a man"), at a few noise levels, once per Apply (the reference and the model do not
change between steps). Their segmentation layers record the same propagated cross-attention
maps as the target's segmentation, and magicface_attn.word_mask reads the word's region off
them. The mask is then carried back from the square frame onto the picture and grown/feathered
as the Concept Mask node would, so everything after it treats it as a drawn mask.
"""
import dataclasses

import torch

from .errors import MagicFaceInputError, reference_prompt_lacks_word
from .host import host_attention, noise_to_sigma, run_unet_once, size_adm
from .layers import layer_hw
from .reference_frame import unfitted
from .reference_pass import reference_noise
from .tokens import locate_concept_tokens
from ..magicface_attn import feather_mask, grow_mask, propagate_cross_maps, word_mask

# Noise levels of the estimate, as fractions of the sampling schedule. The references are clean
# pictures: at lower noise their attention follows the picture itself, at mid noise its layout.
ESTIMATE_FRACTIONS = (0.5, 0.7, 0.9)


class AttentionRecorder:
    """attn1/attn2 replace patches of the segmentation layers for UNet calls on references:
    plain attention (the host's own kernel) that also keeps every layer's propagated
    cross-attention maps, maps (B, h*w, T) float32 on the host's device."""

    def __init__(self, layers, latent_hw):
        self.layers, self.latent_hw = layers, latent_hw
        self.pending, self.maps = {}, []

    def _self(self, key):
        def attention(q, k, v, extra):
            self.pending[key] = (q, k)
            return host_attention(q, k, v, extra["n_heads"], extra)
        return attention

    def _cross(self, layer):
        def attention(q, k, v, extra):
            q_self, k_self = self.pending.pop(layer.key)
            maps = propagate_cross_maps(q_self, k_self, q, k, extra["n_heads"])
            self.maps.append((maps, layer_hw(self.latent_hw, layer.factor)))
            return host_attention(q, k, v, extra["n_heads"], extra)
        return attention

    def patches(self) -> dict:
        return {"attn1": {layer.key: self._self(layer.key) for layer in self.layers},
                "attn2": {layer.key: self._cross(layer) for layer in self.layers}}


def record_reference_maps(model_patcher, sampling, latents, context, pooled, concat, layers, seed):
    """Propagated maps of every segmentation layer at every estimate level, as
    [(maps (R, h*w, T), (h, w))]. latents: (R, C, h, w) clean reference latents (model space);
    context: (R, T, C_ctx) of the references' own prompts; pooled: (R, C_pool) or None;
    concat: (R, C_extra, h, w) or None."""
    latent_hw = tuple(latents.shape[-2:])
    recorder = AttentionRecorder(layers, latent_hw)
    extra = {"y": size_adm(model_patcher.model, pooled, latent_hw), "c_concat": concat}
    for fraction in ESTIMATE_FRACTIONS:
        level = float(sampling.percent_to_sigma(fraction))
        sigma = torch.full((latents.shape[0],), level, dtype=torch.float32)
        noisy = noise_to_sigma(sampling, sigma, reference_noise(seed, level, latents.shape), latents.float())
        options = {"patches_replace": recorder.patches(), "cond_or_uncond": [0] * latents.shape[0], "sigmas": sigma}
        run_unet_once(model_patcher, noisy, sigma, context, options, **extra)
    return recorder.maps


def word_tokens(clip, concept):
    """The concept word's token positions in its own reference prompt."""
    try:
        return locate_concept_tokens(clip.tokenize, concept.reference_prompt, [concept.words])[0]
    except MagicFaceInputError:
        raise reference_prompt_lacks_word(concept.node, concept.reference_prompt, concept.words) from None


def picture_mask(grid_mask, concept, frame_size: int):
    """(H, W) bool on the frame's segmentation grid -> (H_img, W_img) float mask over the
    concept's picture, grown and feathered as its settings say."""
    frame = torch.nn.functional.interpolate(grid_mask[None, None].float().cpu(), size=(frame_size, frame_size),
                                            mode="nearest")[0, 0]
    mask = unfitted(frame[..., None], concept.image.shape[:2])[..., 0]
    settings = concept.auto_mask
    return feather_mask(grow_mask(mask[None], settings.grow), settings.feather)[0].clamp(0, 1)


def estimate_word_masks(layer_maps, tokens, thresholds, out_hw):
    """One magicface_attn.WordMask per reference row of the recorded maps."""
    return [word_mask([(maps[row:row + 1], hw) for maps, hw in layer_maps], out_hw, row_tokens, threshold)
            for row, (row_tokens, threshold) in enumerate(zip(tokens, thresholds))]


def with_estimated_masks(model_patcher, clip, sampling, concepts, references, segmentation_layers, seed):
    """concepts with every pending auto mask replaced by its estimate.

    references: the builder's ReferenceBatch (latents, context, pooled, concat of every concept,
    in concept order); segmentation_layers: the layers whose attention the estimate reads.
    """
    pending = [i for i, c in enumerate(concepts) if c.auto_mask is not None]
    if not pending:
        return concepts
    tokens = [word_tokens(clip, concepts[i]) for i in pending]
    rows = torch.tensor(pending)
    pooled = None if references.pooled is None else references.pooled[rows]
    concat = None if references.concat is None else references.concat[rows]
    layer_maps = record_reference_maps(model_patcher, sampling, references.latents[rows], references.context[rows],
                                       pooled, concat, segmentation_layers, seed)
    out_hw = max((hw for _, hw in layer_maps), key=lambda hw: hw[0] * hw[1])
    estimates = estimate_word_masks(layer_maps, tokens, [concepts[i].auto_mask.threshold for i in pending], out_hw)
    updated = list(concepts)
    for index, estimate in zip(pending, estimates):
        mask = picture_mask(estimate.mask, concepts[index], references.size)
        updated[index] = dataclasses.replace(concepts[index], mask=mask, auto_mask=None)
    return tuple(updated)
