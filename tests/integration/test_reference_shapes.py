"""References of any shape keep their aspect outside reference mode; reference mode squashes them
as the published loader does; a tiny reference is warned about."""
import logging

import torch

from .mf import apply, concepts_from, relative_difference, sample, schedule

LATENT = (1, 4, 16, 16)


def _banner():
    """A wide reference (32 x 128): a red left half and a blue right half, the mask on the left half."""
    image = torch.zeros(1, 32, 128, 3)
    image[..., :64, 0] = 1.0
    image[..., 64:, 2] = 1.0
    mask = torch.zeros(1, 32, 128)
    mask[..., 8:24, 16:48] = 1.0
    return image, mask


def test_a_wide_reference_keeps_its_aspect_and_its_padding_is_masked_out(tiny):
    model, clip, vae = tiny
    image, mask = _banner()
    _, _, patch = apply(model, clip, vae, concepts_from([(image, mask, "man", 3.0)]), "a photo of a man")
    frame, frame_mask = patch.plan.reference_images[0], patch.plan.reference_masks[0]
    assert frame.shape == (128, 128, 3)
    # the banner fills the width and sits in rows 48..79; the padding repeats its edge rows
    assert torch.allclose(frame[48:80], image[0])
    assert torch.equal(frame[:48], frame[48:49].expand(48, -1, -1))
    assert torch.equal(frame[80:], frame[79:80].expand(48, -1, -1))
    # the mask is the same fit, with nothing of the concept in the padding
    assert torch.equal(frame_mask[48:80], mask[0]) and frame_mask[:48].sum() == 0 and frame_mask[80:].sum() == 0


def test_reference_mode_squashes_as_the_published_loader(tiny):
    model, clip, vae = tiny
    image, mask = _banner()
    _, _, patch = apply(model, clip, vae, concepts_from([(image, mask, "man", 3.0)]), "a photo of a man",
                        sched=schedule(mask_mode="reference"))
    frame = patch.plan.reference_images[0]
    expected = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(128, 128), mode="nearest")
    assert torch.equal(frame, expected[0].movedim(0, -1))


def test_keeping_the_aspect_changes_the_result_against_a_squashed_reference(tiny, negative):
    """The same wide reference, letterboxed by the pack and squashed beforehand by the user: both
    run, and they differ (the figure is printed for the docs)."""
    model, clip, vae = tiny
    image, mask = _banner()
    squashed = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(128, 128), mode="bilinear")
    squashed_mask = torch.nn.functional.interpolate(mask[:, None], size=(128, 128), mode="bilinear")[:, 0]
    results = {}
    for name, (picture, picture_mask) in {"letterboxed": (image, mask),
                                         "squashed": (squashed.movedim(1, -1), squashed_mask)}.items():
        patched, positive, _ = apply(model, clip, vae, concepts_from([(picture, picture_mask, "man", 3.0)]),
                                     "a photo of a man")
        results[name] = sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    plain_model, plain_positive, _ = apply(model, clip, vae, None, "a photo of a man")
    plain = sample(plain_model, plain_positive, negative, torch.zeros(LATENT), steps=3)
    difference = relative_difference(results["letterboxed"], results["squashed"])
    effect = relative_difference(results["squashed"], plain)
    print(f"letterboxed vs squashed: relative L2 {difference:.4f}; squashed vs plain {effect:.4f}")
    assert all(torch.isfinite(r).all() for r in results.values())
    assert difference > 1e-4


def test_a_tiny_reference_is_warned_about(tiny, caplog):
    image = torch.rand(1, 8, 8, 3)
    with caplog.at_level(logging.WARNING, logger="MagicFace"):
        concepts_from([(image, None, "man", 3.0)])
    assert "[MagicFace Concept Loader] the reference image is 8x8 px" in caplog.text
