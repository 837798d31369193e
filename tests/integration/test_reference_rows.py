"""How the references' rows are computed: coupled into the target's call, or a separate pass.

Both ways must give the same image (up to float rounding of a different batch size), and the
separate pass must be chosen exactly when something else could see the extra rows.
"""
import pytest
import torch

from .mf import apply, assert_close, node, reference_calls, sample, separate_pass_only, two_concepts

LATENT = (1, 4, 16, 16)
PROMPT = "a photo of a man"


def test_references_ride_in_the_target_batch_and_match_the_separate_pass(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)
    coupled = sample(patched, positive, negative, torch.zeros(LATENT), steps=4)
    assert reference_calls(patch) == (4, 0)
    with separate_pass_only():
        separate = sample(patched, positive, negative, torch.zeros(LATENT), steps=4)
    assert reference_calls(patch) == (0, 4)
    assert_close(coupled, separate)
    assert not torch.equal(coupled, sample(model, positive, negative, torch.zeros(LATENT), steps=4))


def test_controlnet_residuals_skip_the_reference_rows(tiny, negative, tiny_controlnet):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)
    control = node("ControlNetLoader").load_controlnet(tiny_controlnet.name)[0]
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(5))
    controlled = node("ControlNetApply").apply_controlnet(positive, control, hint, 1.0)[0]
    coupled = sample(patched, controlled, negative, torch.zeros(LATENT), steps=3)
    assert reference_calls(patch) == (3, 0)
    with separate_pass_only():
        separate = sample(patched, controlled, negative, torch.zeros(LATENT), steps=3)
    assert_close(coupled, separate)


def test_long_prompt_repeats_the_reference_context(tiny, negative):
    model, clip, vae = tiny
    prompt = ", ".join(["a sunny park with tall green trees and a blue sky"] * 9) + ", a photo of a man"
    patched, positive, patch = apply(model, clip, vae, two_concepts(), prompt)
    coupled = sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    assert reference_calls(patch) == (3, 0)
    with separate_pass_only():
        separate = sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    assert_close(coupled, separate)


class ForeignBlockPatch:
    """Another node's output_block_patch (as FreeU-like nodes install): sees whole batches."""

    def __init__(self):
        self.batches = []

    def __deepcopy__(self, memo):
        return self

    def __call__(self, h, hsp, transformer_options):
        self.batches.append(h.shape[0])
        return h, hsp


def test_foreign_block_patch_never_sees_reference_rows(tiny, negative):
    model, clip, vae = tiny
    other = model.clone()
    foreign = ForeignBlockPatch()
    other.set_model_output_block_patch(foreign)
    patched, positive, patch = apply(other, clip, vae, two_concepts(), PROMPT)
    sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    assert reference_calls(patch) == (0, 3)
    assert foreign.batches and set(foreign.batches) == {2}  # cond + uncond only, never 2 + R


def test_larger_frame_letterboxes_the_references(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)  # 16x16 reference latents
    latent = sample(patched, positive, negative, torch.zeros(1, 4, 16, 32), steps=3)
    assert reference_calls(patch) == (3, 0) and torch.isfinite(latent).all()
    report = patch.report()
    for layer in patch.plan.injection_layers:
        assert report["calls"][("rsa", layer.name)] + report["calls"].get(("rba", layer.name), 0) == 3
    record = report["attention"]
    top, left, height, width = record.ref_window
    factor = record.layer.factor
    assert (height, width) == (16 // factor, 16 // factor) and record.ref_grid == (16 // factor, 32 // factor)
    assert top == 0 and left == 8 // factor  # centred, aligned to 8 latent pixels
    # Keys outside the window (the zero border) are never attended.
    excluded = ~record.refs.key_mask.reshape(-1, *record.ref_grid)
    assert excluded[:, :, :left].all() and excluded[:, :, left + width:].all()
    images = vae.decode(latent)
    maps, _ = node("MagicFaceAttentionMap").attention_map(patch, images, 0.5, 0.5, 0.6)
    assert maps.shape[0] == 2 and torch.isfinite(maps).all() and maps.std() > 0


def test_smaller_frame_takes_the_separate_pass(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)
    latent = sample(patched, positive, negative, torch.zeros(1, 4, 16, 8), steps=2)
    assert reference_calls(patch) == (0, 2) and torch.isfinite(latent).all()


@pytest.mark.parametrize("frame", [(16, 24), (16, 32)])
def test_letterboxed_references_stay_close_to_their_own_pass(tiny, negative, frame):
    """The letterbox is an approximation (the references' norms and self-attention see the frame):
    it must stay a small part of MagicFace's effect (a zero border would not)."""
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)  # 16x16 reference latents
    latent = torch.zeros(1, 4, *frame)
    plain = sample(model, positive, negative, latent, steps=6)
    letterboxed = sample(patched, positive, negative, latent, steps=6)
    assert reference_calls(patch) == (6, 0)
    with separate_pass_only():
        separate = sample(patched, positive, negative, latent, steps=6)
    deviation = ((letterboxed - separate).norm() / (separate - plain).norm()).item()
    print(f"frame {frame}: letterbox deviation {deviation:.3f} of the effect")
    assert deviation < 0.25, deviation


def test_references_filling_less_than_half_the_frame_take_their_own_pass(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)  # 16x16 reference latents
    latent = sample(patched, positive, negative, torch.zeros(1, 4, 24, 24), steps=2)
    assert reference_calls(patch) == (0, 2) and torch.isfinite(latent).all()
