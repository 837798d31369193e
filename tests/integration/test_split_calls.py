"""Steps whose cond and uncond rows the host runs in two model calls.

ComfyUI batches a step's cond and uncond rows into one call when the model's memory estimate
fits, else it calls the model once per half (uncond first on the 2024 host). The segmentation
reads both halves (the uncond rows give the foreground), so a split step must segment as a
batched one does.
"""
import torch

from .mf import apply, injected_calls, sample, two_concepts

STEPS = 3
LATENT = (1, 4, 32, 24)
PROMPT = "a photo of a man"


def test_a_split_step_segments_as_a_batched_one(tiny, negative, monkeypatch):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)
    sample(patched, positive, negative, torch.zeros(LATENT), steps=STEPS)
    batched_report = patch.report()
    assert ("segmentation", "uncond half") not in batched_report["calls"]

    estimate = model.model.memory_required
    # As on a GPU short of memory: more than one latent row at a time never fits.
    def one_row_at_a_time(input_shape, **kwargs):
        return float("inf") if input_shape[0] > 1 else estimate(input_shape=input_shape, **kwargs)

    monkeypatch.setattr(model.model, "memory_required", one_row_at_a_time)
    split = sample(patched, positive, negative, torch.zeros(LATENT), steps=STEPS)
    report = patch.report()
    assert report["calls"][("segmentation", "uncond half")] == STEPS
    names = {layer.name for layer in patch.plan.injection_layers}
    assert set(injected_calls(report, "rsa")) == set(injected_calls(report, "rba")) == names
    assert report["calls"][("guidance", "step")] == STEPS
    assert len(report["label_history"]) == STEPS
    # The halves run at other batch sizes than one batched call, so the maps differ by float
    # rounding (about 1e-4) and a few near-ties flip; segmenting the cond half alone (no
    # foreground) changed about half of the labels here.
    for (_, split_labels), (_, batched_labels) in zip(report["label_history"], batched_report["label_history"]):
        assert (split_labels == batched_labels).float().mean().item() > 0.95
    for split_seg, batched_seg in zip(report["segmentation"], batched_report["segmentation"]):
        assert (split_seg.fore == batched_seg.fore).float().mean().item() > 0.95
        assert torch.allclose(split_seg.fore_scores, batched_seg.fore_scores, atol=1e-3)
        assert torch.allclose(split_seg.token_scores, batched_seg.token_scores, atol=1e-3)
    assert torch.isfinite(split).all()
