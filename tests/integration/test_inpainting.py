"""Inpainting checkpoints: UNets that take a mask and a masked image as extra input channels.

The references' rows need those channels too; they get what the host gives a text-to-image
call of the same model (nothing known: mask all ones, a black masked image).
"""
import pytest
import torch

from .mf import (apply, assert_close, assert_stage_counts, concepts_from, encode, pack_module, reference_calls,
                 relative_difference, run_node, sample, separate_pass_only, synthetic_concept, two_concepts)

PROMPT = "a photo of a man"


@pytest.fixture(scope="module")
def inpaint_model(comfy_host):
    from harness.tiny_models import build_model_patcher
    return build_model_patcher("sd15inpaint")


def _inpaint_inputs(vae, positive, negative, how, size=(128, 128)):
    """(positive, negative, latent dict) of the two ways a graph feeds an inpainting model."""
    pixels = torch.rand(1, *size, 3, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, *size)
    mask[:, 32:96, 40:104] = 1
    if how == "VAEEncodeForInpaint":
        return positive, negative, run_node("VAEEncodeForInpaint", vae=vae, pixels=pixels, mask=mask, grow_mask_by=0)[0]
    return run_node("InpaintModelConditioning", positive=positive, negative=negative, vae=vae, pixels=pixels,
                    mask=mask)


@pytest.mark.parametrize("how", ["VAEEncodeForInpaint", "InpaintModelConditioning"])
def test_inpainting_model_gets_magicface_in_both_stages(tiny, negative, inpaint_model, how):
    _, clip, vae = tiny
    plain = sample(inpaint_model, *_inpaint_inputs(vae, encode(clip, PROMPT), negative, how), steps=4)
    patched, positive, patch = apply(inpaint_model, clip, vae, two_concepts(), PROMPT)
    coupled = sample(patched, *_inpaint_inputs(vae, positive, negative, how), steps=4)
    assert_stage_counts(patch.report(), patch)
    assert reference_calls(patch) == (4, 0)
    with separate_pass_only():
        separate = sample(patched, *_inpaint_inputs(vae, positive, negative, how), steps=4)
    assert reference_calls(patch) == (0, 4)
    assert_close(coupled, separate)
    assert (coupled - plain).abs().max() > 1e-3


def test_letterboxed_references_take_their_inpainting_channels_along(tiny, negative, inpaint_model):
    _, clip, vae = tiny
    patched, positive, patch = apply(inpaint_model, clip, vae, two_concepts(), PROMPT)
    inputs = _inpaint_inputs(vae, positive, negative, "InpaintModelConditioning", size=(128, 192))
    letterboxed = sample(patched, *inputs, steps=3)
    assert reference_calls(patch) == (3, 0)
    with separate_pass_only():
        separate = sample(patched, *inputs, steps=3)
    assert torch.isfinite(letterboxed).all()
    # Letterboxing approximates the references' own pass (see test_reference_rows); not equal.
    assert relative_difference(letterboxed, separate) < 0.05


def test_reference_rows_get_the_hosts_nothing_known_channels(inpaint_model):
    host = pack_module("comfy_glue.host")
    latents = torch.randn(2, 4, 8, 8)
    concat = host.nothing_known_concat(inpaint_model.model, latents)
    assert concat.shape == (2, 5, 8, 8)
    assert torch.equal(concat[:, 0], torch.ones(2, 8, 8))
    blank = getattr(inpaint_model.model, "blank_inpaint_image_like", None)
    if blank is not None:  # newer hosts keep the black latent on the model
        assert torch.equal(concat[:, 1:], blank(latents))
    black = concat[:, 1:, 0, 0]
    assert torch.equal(concat[:, 1:], black[:, :, None, None].expand(2, 4, 8, 8))
    assert torch.allclose(black[0], torch.tensor([0.8223, -0.6876, 0.6364, 0.1380]))


def test_unknown_extra_channels_are_a_clear_error(tiny, inpaint_model, monkeypatch):
    _, clip, vae = tiny
    monkeypatch.setattr(pack_module("comfy_glue.builder"), "nothing_known_concat", lambda base, latents: None)
    image, mask = synthetic_concept(0)
    with pytest.raises(ValueError, match=r"\[MagicFace Apply\] input 'model': this UNet takes 5 input channels"):
        apply(inpaint_model, clip, vae, concepts_from([(image, mask, "man", 3.0)]), PROMPT)
