"""MagicFace with area conditioning: the host runs cropped model calls beside full-size ones."""
import torch

from .mf import apply, concepts_from, encode, node, sample, synthetic_concept

LATENT = (1, 4, 16, 16)


def test_area_crops_stay_plain_and_the_full_frame_keeps_one_run(tiny, negative):
    model, clip, vae = tiny
    image, mask = synthetic_concept(21)
    concepts = concepts_from([(image, mask, "man", 2.5)])
    patched, positive, patch = apply(model, clip, vae, concepts, "a photo of a man")
    area = node("ConditioningSetArea").append(encode(clip, "a red hat"), 64, 64, 0, 0, 1.0)[0]
    combined = node("ConditioningCombine").combine(positive, area)[0]
    out = sample(patched, combined, negative, torch.zeros(LATENT), steps=4)
    report = patch.report()
    assert torch.isfinite(out).all()
    # One run over all four steps (the crops did not restart it), MagicFace on the full frame only.
    assert len(report["rsa_sigmas"]) + len(report["rba_sigmas"]) == 4
    assert report["calls"][("references", "coupled")] == 4
    assert report["calls"][("segmentation", "step")] == 4
    layer = patch.plan.injection_layers[0].name
    assert report["calls"][("rsa", layer)] + report["calls"].get(("rba", layer), 0) == 4

