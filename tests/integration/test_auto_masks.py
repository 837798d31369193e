"""Concept masks estimated from the references' own attention (Concept Loader without a mask):
what the estimate equals, when it runs, and that a drawn mask and reference mode are untouched."""
import types

import pytest
import torch

from .mf import apply, concepts_from, node, pack_module, sample, schedule, synthetic_concept

PROMPT = "a photo of a man"
SIZE = 128  # the reference frame of these tests (apply's reference_size)


def _image(seed=21, size=(SIZE, SIZE)):
    return synthetic_concept(seed, size)[0]


def _auto_concept(seed=21, size=(SIZE, SIZE), words="man", **inputs):
    return node("MagicFaceConceptLoader").load(_image(seed, size), words, 3.0, **inputs)[0]


class _CountingUNet:
    """Counts the calls of the base model's apply_model while installed."""

    def __init__(self, model, monkeypatch):
        self.calls = 0
        original = model.model.apply_model

        def counted(base, *args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)
        # bound to the model, as the host's own method is (the pack reads apply_model.__self__)
        monkeypatch.setattr(model.model, "apply_model", types.MethodType(counted, model.model))


def _recorded_maps(model, plan, seed):
    """The reference rows' propagated maps, recorded here with the host's patch API and the plain
    (materialised) propagation: [(maps (R, h*w, T), (h, w))] over the estimate's noise levels."""
    import comfy.model_management
    mf = pack_module("magicface_attn")
    auto_mask = pack_module("comfy_glue.auto_mask")
    latents, context = plan.reference_latents.float(), plan.reference_context
    latent_hw = tuple(latents.shape[-2:])
    clone, pending, maps = model.clone(), {}, []

    def self_attention(q, k, v, extra):
        pending[extra["block"] + (extra["block_index"],)] = (q, k)
        return mf.plain_attention(q, k, v, extra["n_heads"])

    def cross_attention(q, k, v, extra):
        q_self, k_self = pending.pop(extra["block"] + (extra["block_index"],))
        grid = pack_module("comfy_glue.layers").layer_hw(latent_hw, factors[extra["block"] + (extra["block_index"],)])
        maps.append((mf.propagate_cross_maps(q_self, k_self, q, k, extra["n_heads"], impl="plain"), grid))
        return mf.plain_attention(q, k, v, extra["n_heads"])
    factors = {layer.key: layer.factor for layer in plan.segmentation_layers}
    for (block, number, index) in factors:
        clone.set_model_attn1_replace(self_attention, block, number, index)
        clone.set_model_attn2_replace(cross_attention, block, number, index)
    sampling = clone.model.model_sampling
    comfy.model_management.load_models_gpu([clone])
    for fraction in auto_mask.ESTIMATE_FRACTIONS:
        level = float(sampling.percent_to_sigma(fraction))
        sigma = torch.full((latents.shape[0],), level)
        noise = pack_module("comfy_glue.reference_pass").reference_noise(seed, level, latents.shape)
        noisy = sampling.noise_scaling(sigma.view(-1, 1, 1, 1), noise, latents)
        clone.model.apply_model(noisy, sigma, c_crossattn=context,
                                transformer_options=clone.model_options["transformer_options"])
    return maps


def test_the_estimate_is_the_segmentation_of_the_reference_rows(tiny):
    """Oracle: the same segmentation rule (segment(), start token against the word, ties to the
    word) on attention recorded independently gives the mask MagicFace Apply put in its plan."""
    model, clip, vae = tiny
    _, _, patch = apply(model, clip, vae, _auto_concept(), PROMPT, seed=3)
    plan = patch.plan
    maps = _recorded_maps(model, plan, seed=3)
    word = pack_module("comfy_glue.tokens").locate_concept_tokens(clip.tokenize, "a man", ["man"])[0]
    out_hw = max((hw for _, hw in maps), key=lambda hw: hw[0] * hw[1])
    kept = [(m[..., [0, *word]], hw) for m, hw in maps]
    labels = pack_module("magicface_attn").segment(kept, out_hw, [list(range(1, 1 + len(word)))], ca_scale=1.0).labels
    step = SIZE // out_hw[0]
    used = plan.reference_masks[0][step // 2::step, step // 2::step] > 0.5
    mismatched = (used != (labels == 0)).sum().item()
    assert mismatched <= 1, f"{mismatched} of {labels.numel()} cells differ"  # near-ties: fast vs plain maths
    assert 0 < used.float().mean() < 1  # on this reference the attention picks part of the picture


def test_the_estimate_is_deterministic_and_runs_once_at_apply(tiny, monkeypatch, negative):
    """A function of image, word, model and seed, computed by MagicFace Apply with one UNet call
    per noise level, before any sampling step (the plan is complete when Apply returns)."""
    model, clip, vae = tiny
    auto_mask = pack_module("comfy_glue.auto_mask")
    counter = _CountingUNet(model, monkeypatch)
    patched, positive, first = apply(model, clip, vae, _auto_concept(), PROMPT, seed=3)
    assert counter.calls == len(auto_mask.ESTIMATE_FRACTIONS)
    _, _, second = apply(model, clip, vae, _auto_concept(), PROMPT, seed=3)
    assert torch.equal(first.plan.reference_masks, second.plan.reference_masks)
    before = counter.calls
    sample(patched, positive, negative, torch.zeros(1, 4, 16, 16), steps=2)
    assert counter.calls > before and torch.equal(first.plan.reference_masks, second.plan.reference_masks)


def test_a_connected_mask_is_used_as_before(tiny, monkeypatch):
    model, clip, vae = tiny
    image, mask = synthetic_concept(21, (SIZE, SIZE))
    counter = _CountingUNet(model, monkeypatch)
    _, _, patch = apply(model, clip, vae, concepts_from([(image, mask, "man", 3.0)]), PROMPT)
    assert counter.calls == 0
    assert torch.equal(patch.plan.reference_masks[0], mask[0])


def test_whole_image_and_reference_mode_run_no_estimate(tiny, monkeypatch):
    model, clip, vae = tiny
    counter = _CountingUNet(model, monkeypatch)
    _, _, whole = apply(model, clip, vae, _auto_concept(mask_source="whole image"), PROMPT)
    _, _, published = apply(model, clip, vae, _auto_concept(), PROMPT, sched=schedule(mask_mode="reference"))
    assert counter.calls == 0
    assert bool((whole.plan.reference_masks == 1).all()) and bool((published.plan.reference_masks == 1).all())


def test_threshold_grow_and_feather_shape_the_estimate(tiny):
    model, clip, vae = tiny
    masks = {}
    for name, inputs in {"plain": {}, "tight": {"auto_threshold": 0.6}, "grown": {"auto_grow": 16},
                         "feathered": {"auto_feather": 8.0}}.items():
        masks[name] = apply(model, clip, vae, _auto_concept(**inputs), PROMPT, seed=3)[2].plan.reference_masks[0]
    assert (masks["tight"] <= masks["plain"]).all() and masks["tight"].sum() < masks["plain"].sum()
    assert (masks["grown"] >= masks["plain"]).all() and masks["grown"].sum() > masks["plain"].sum()
    soft = masks["feathered"]
    assert ((soft > 0) & (soft < 1)).any() and not ((masks["plain"] > 0) & (masks["plain"] < 1)).any()


def test_a_wide_reference_gets_its_mask_over_its_own_picture(tiny):
    """The estimate is made in the square frame and carried back onto the picture: the frame's
    padding never becomes part of the concept."""
    model, clip, vae = tiny
    _, _, patch = apply(model, clip, vae, _auto_concept(size=(32, SIZE)), PROMPT, seed=3)
    frame_mask = patch.plan.reference_masks[0]
    assert frame_mask[:48].sum() == 0 and frame_mask[80:].sum() == 0 and frame_mask[48:80].sum() > 0


@pytest.mark.parametrize("prompt", ["a woman", "a photo of a manly hat"])
def test_a_reference_prompt_without_the_word_is_refused_at_the_loader(comfy_host, prompt):
    with pytest.raises(ValueError, match=r"\[MagicFace Concept Loader\] input 'reference_prompt'.*'man'"):
        _auto_concept(reference_prompt=prompt)


def test_a_source_that_would_ignore_the_connected_mask_is_refused(comfy_host):
    image, mask = synthetic_concept(21, (SIZE, SIZE))
    for source in ("attention", "whole image"):
        with pytest.raises(ValueError, match=r"\[MagicFace Concept Loader\] input 'mask_source'"):
            node("MagicFaceConceptLoader").load(image, "man", 3.0, mask=mask, mask_source=source)


def test_the_mask_preview_shows_the_masks_of_the_plan(tiny):
    model, clip, vae = tiny
    image, mask = synthetic_concept(22, (SIZE, SIZE))
    concepts = concepts_from([(image, mask, "photo", 2.0)], previous=_auto_concept())
    _, _, patch = apply(model, clip, vae, concepts, PROMPT, seed=3)
    masks, overlay = node("MagicFaceMaskPreview").preview(patch, 0.5)
    assert torch.equal(masks, patch.plan.reference_masks)
    assert overlay.shape[0] == 2 and overlay.shape[2] == SIZE and overlay.shape[1] > SIZE  # legend strip below
    # where the mask is on, the concept colour shows; where off, the reference itself
    off = masks[0] < 0.5
    assert torch.allclose(overlay[0, :SIZE, :, :][off], patch.plan.reference_images[0][off])


def test_attention_on_one_half_gives_the_mask_of_that_half(tiny, monkeypatch):
    """Where the recorded attention of the word favours the left half of the reference (and the
    start token the right half), the mask Apply uses is the left half of the picture."""
    model, clip, vae = tiny
    auto_mask = pack_module("comfy_glue.auto_mask")
    word = pack_module("comfy_glue.tokens").locate_concept_tokens(clip.tokenize, "a man", ["man"])[0]

    def left_half_maps(q_self, k_self, q_cross, k_text, heads):
        side = int(q_self.shape[1] ** 0.5)
        left = (torch.arange(side)[None, :] < side // 2).float().expand(side, side).reshape(-1)
        maps = torch.full((q_self.shape[0], side * side, k_text.shape[1]), 0.05)
        maps[..., 0] = 1.1 - left
        maps[..., word] = (0.1 + left)[:, None]
        return maps
    monkeypatch.setattr(auto_mask, "propagate_cross_maps", left_half_maps)
    _, _, patch = apply(model, clip, vae, _auto_concept(), PROMPT)
    expected = torch.zeros(SIZE, SIZE)
    expected[:, : SIZE // 2] = 1
    assert torch.equal(patch.plan.reference_masks[0], expected)
