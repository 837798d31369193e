"""Nodes that patch the same attention layers as MagicFace, applied after MagicFace Apply.

Self-Attention Guidance replaces the middle block's self-attention and calls the model once
more per step with the negative prompt in the cond slot. IPAdapter-style nodes (IPAdapter,
InstantID, PuLID) find an existing cross-attention replace and call its add(); the stand-in
below follows that protocol: the callback's result is added to the attention output while
the noise level is within its sigma_start..sigma_end.
"""
import pytest
import torch

from .mf import (apply, apply_with_other, assert_stage_counts, concepts_from, injected_calls, pack_module, patch_of,
                 run_node, sample, synthetic_concept)

STEPS = 3
LATENT = (1, 4, 32, 24)


def _concept():
    image, mask = synthetic_concept(0)
    return concepts_from([(image, mask, "man", 3.0)])


class AdapterReplace:
    """An IPAdapter-style attn2 replace: plain attention plus every added callback."""

    def __init__(self, callback, **kwargs):
        self.callbacks = [(callback, kwargs)]

    def add(self, callback, **kwargs):
        self.callbacks.append((callback, kwargs))

    def copy(self):
        callback, kwargs = self.callbacks[0]
        duplicate = AdapterReplace(callback, **kwargs)
        duplicate.callbacks = list(self.callbacks)
        return duplicate

    def __call__(self, q, k, v, extra):
        import comfy.ldm.modules.attention as attention
        out = attention.optimized_attention(q, k, v, extra["n_heads"])
        for callback, kwargs in self.callbacks:
            out = out + callback(out, q, k, v, extra, **kwargs)
        return out


class IdentityAdapter:
    """Stand-in for an IPAdapter node: adds `weight * tanh(out)` at every cross-attention layer."""

    def __init__(self):
        self.calls = 0

    def callback(self, out, q, k, v, extra, weight=0.0, sigma_start=float("inf"), sigma_end=0.0):
        self.calls += 1
        return weight * out.tanh()

    def apply(self, model, weight):
        patched = model.clone()
        options = patched.model_options["transformer_options"].copy()
        replaces = options.setdefault("patches_replace", {}).copy()
        options["patches_replace"] = replaces
        attn2 = dict(replaces.get("attn2", {}))
        replaces["attn2"] = attn2
        layers = pack_module("comfy_glue.layers")
        for layer in layers.list_attention_layers(patched.model.diffusion_model):
            if layer.has_cross:
                kwargs = dict(weight=weight, sigma_start=float("inf"), sigma_end=0.0)
                if isinstance(attn2.get(layer.key), AdapterReplace):
                    # Its own replace from an earlier application: copied, since newer hosts share
                    # the objects in model_options between clones (what this stand-in does to its
                    # own objects is not under test; MagicFace's hooks below are).
                    attn2[layer.key] = attn2[layer.key].copy()
                    attn2[layer.key].add(self.callback, **kwargs)
                elif layer.key in attn2:
                    attn2[layer.key].add(self.callback, **kwargs)
                else:
                    attn2[layer.key] = AdapterReplace(self.callback, **kwargs)
        patched.model_options["transformer_options"] = options
        return patched


def test_ipadapter_style_add_after_magicface(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _concept(), "a photo of a man")
    latent = torch.zeros(LATENT)
    magicface_only = sample(patched, positive, negative, latent, steps=STEPS)
    adapter = IdentityAdapter()
    both = adapter.apply(patched, 0.5)
    twice = adapter.apply(both, 0.25)  # a second adapter adds to the same hooks of its own clone
    out = sample(both, positive, negative, latent, steps=STEPS)
    report = patch.report()
    assert_stage_counts(report, patch)  # every segmentation layer still feeds the segmentation
    layers = pack_module("comfy_glue.layers").list_attention_layers(patched.model.diffusion_model)
    # One call per step (cond and uncond batched): the adapter acted at every cross-attention layer,
    # MagicFace's included, once per call; the references' own pass has no cross-attention hooks.
    assert adapter.calls == STEPS * sum(layer.has_cross for layer in layers)
    assert not torch.equal(out, magicface_only) and torch.isfinite(out).all()
    # Neither adapter leaked into the model it was applied to.
    assert torch.equal(sample(patched, positive, negative, latent, steps=STEPS), magicface_only)
    assert torch.equal(sample(both, positive, negative, latent, steps=STEPS), out)
    assert not torch.equal(sample(twice, positive, negative, latent, steps=STEPS), out)


def test_each_clone_holds_its_own_cross_attention_hooks(tiny):
    """Whatever clone() copies on this host (deep copies on older hosts, the same objects on
    newer ones), a clone of a patched model and the model itself never share a hook that
    IPAdapter-style nodes add() to; the hooks of a clone of a clone are its own too."""
    model, clip, vae = tiny
    patched, _, _ = apply(model, clip, vae, _concept(), "a photo of a man")
    patch = patch_of(patched)
    clone = patched.clone()
    grandchild = clone.clone()
    replaces = lambda m: m.model_options["transformer_options"]["patches_replace"]["attn2"]  # noqa: E731
    cross_keys = [key for kind, key in patch.installed if kind == "attn2"]
    assert cross_keys
    for key in cross_keys:
        hooks = [replaces(m)[key] for m in (patched, clone, grandchild)]
        assert len({id(h) for h in hooks}) == 3, key
        assert all(h.owner is patch and h.layer.key == key for h in hooks)


def test_ipadapter_style_before_magicface_matches_after(tiny, negative):
    model, clip, vae = tiny
    latent = torch.zeros(LATENT)
    first = IdentityAdapter().apply(model, 0.5)
    before, positive, _ = apply(first, clip, vae, _concept(), "a photo of a man")
    after, _, _ = apply(model, clip, vae, _concept(), "a photo of a man")
    after = IdentityAdapter().apply(after, 0.5)
    assert torch.equal(sample(before, positive, negative, latent, steps=STEPS),
                       sample(after, positive, negative, latent, steps=STEPS))


def _sampled_with(tiny, negative, other, other_first: bool):
    """(output, report, patch) of MagicFace sampled with another node's patch, in either order."""
    patched, positive, patch = apply_with_other(tiny, other, other_first)
    out = sample(patched, positive, negative, torch.zeros(LATENT), steps=STEPS)
    return out, patch.report(), patch


@pytest.mark.parametrize("other_first", [True, False])
def test_self_attention_guidance(tiny, negative, other_first):
    sag = lambda m: run_node("SelfAttentionGuidance", model=m, scale=0.5, blur_sigma=2.0)[0]  # noqa: E731
    out, report, patch = _sampled_with(tiny, negative, sag, other_first)
    # SAG's extra call per step (negative prompt in the cond slot, blurred input) runs plain:
    # MagicFace acts once per step, and every segmentation layer, the middle block's included,
    # comes from the step's own call.
    assert_stage_counts(report, patch)
    assert len(report["rsa_sigmas"]) + len(report["rba_sigmas"]) == STEPS
    assert report["calls"][("guidance pass", "plain")] == STEPS
    assert report["calls"][("segmentation", "step")] == STEPS
    assert torch.isfinite(out).all()


def _perturbed_attention_guidance(model):
    import nodes
    if "PerturbedAttentionGuidance" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this ComfyUI host has no PerturbedAttentionGuidance node (added after the 2024 CI host)")
    return run_node("PerturbedAttentionGuidance", model=model, scale=3.0)[0]


@pytest.mark.parametrize("other_first", [True, False])
def test_perturbed_attention_guidance(tiny, negative, other_first):
    out, report, patch = _sampled_with(tiny, negative, _perturbed_attention_guidance, other_first)
    # PAG's pass (the positive prompt, the middle block's self-attention perturbed) gets MagicFace
    # like the step's own cond rows, so their difference keeps only PAG's perturbation; the
    # segmentation still comes from each step's own call.
    assert report["calls"][("guidance pass", "magicface")] == STEPS
    assert report["calls"][("segmentation", "step")] == STEPS
    for layer in patch.plan.injection_layers:
        assert injected_calls(report, "rsa")[layer.name] + injected_calls(report, "rba").get(layer.name, 0) >= 2 * STEPS - 2
    assert torch.isfinite(out).all()


def test_two_magicface_applies_on_one_model_the_last_acts(tiny, negative):
    model, clip, vae = tiny
    first, _, first_patch = apply(model, clip, vae, _concept(), "a photo of a man")
    image, mask = synthetic_concept(5)
    second, positive, second_patch = apply(first, clip, vae, concepts_from([(image, mask, "woman", 2.0)]),
                                           "a photo of a woman")
    out = sample(second, positive, negative, torch.zeros(LATENT), steps=STEPS)
    assert_stage_counts(second_patch.report(), second_patch)
    first_report = first_patch.report()
    assert first_report is None or not (injected_calls(first_report, "rsa") or injected_calls(first_report, "rba"))
    assert torch.isfinite(out).all()
