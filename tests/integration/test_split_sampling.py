"""One schedule split across two KSampler (Advanced) nodes, as two-pass and refiner-style graphs
do: the second sampler continues the first's segmentation, on every host."""
import torch

from .mf import apply, concepts_from, injected_calls, synthetic_concept

STEPS, SPLIT = 6, 3


def _concept():
    image, mask = synthetic_concept(0)
    return concepts_from([(image, mask, "man", 3.0)])


def _advanced(model, positive, negative, latent, start, end, add_noise, leftover):
    import nodes
    return nodes.KSamplerAdvanced().sample(model, add_noise, 0, STEPS, 5.0, "euler", "normal", positive, negative,
                                           latent, start, end, leftover)[0]


def test_split_schedule_matches_one_sampler(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _concept(), "a photo of a man")
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    whole = _advanced(patched, positive, negative, latent, 0, 10000, "enable", "disable")["samples"]
    first = _advanced(patched, positive, negative, latent, 0, SPLIT, "enable", "enable")
    second = _advanced(patched, positive, negative, first, SPLIT, 10000, "disable", "disable")["samples"]
    report = patch.report()
    # The second sampler's steps are all RBA steps, and RBA acts at every one of them, its first
    # included (with the regions of the first sampler's last step).
    assert len(report["rba_sigmas"]) == STEPS - SPLIT
    assert all(n == STEPS - SPLIT for n in injected_calls(report, "rba").values())
    assert set(injected_calls(report, "rba")) == {layer.name for layer in patch.plan.injection_layers}
    assert torch.allclose(second, whole, atol=1e-3), (second - whole).abs().max()
