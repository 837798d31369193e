"""MagicFace combined with what users put around it: LoRA, ControlNet, other attention patches, real examples."""
import torch

from .mf import (PAUL_PROMPT, apply, concepts_from, injected_calls, node, paul_concepts, sample,
                 synthetic_concept)

LATENT = (1, 4, 16, 16)


def _one_concept():
    image, mask = synthetic_concept(3)
    return concepts_from([(image, mask, "man", 3.0)])


def _fired(patch):
    report = patch.report()
    names = {layer.name for layer in patch.plan.injection_layers}
    return set(injected_calls(report, "rsa")) == names and set(injected_calls(report, "rba")) == names


def test_three_concepts_paul_example(tiny, negative, examples_dir):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, paul_concepts(examples_dir), PAUL_PROMPT)
    assert patch.plan.concept_count == 3 and patch.plan.ca_scale == 0.6
    # "a man with a hat wearing a sunglasses": man, hat, sunglasses are tokens 2, 5, 8 (reference ref_index)
    assert [list(t) for t in patch.plan.concept_tokens] == [[2], [5], [8]]
    out = sample(patched, positive, negative, torch.zeros(LATENT), steps=4)
    assert _fired(patch)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, sample(model, positive, negative, torch.zeros(LATENT), steps=4))


def test_lora_before_and_after_apply(tiny, negative, tiny_lora):
    model, clip, vae = tiny
    lora = node("LoraLoader")
    lora_model, lora_clip = lora.load_lora(model, clip, tiny_lora.name, 1.0, 1.0)
    before, positive, patch_before = apply(lora_model, lora_clip, vae, _one_concept(), "a photo of a man")
    out_before = sample(before, positive, negative, torch.zeros(LATENT), steps=3)
    assert _fired(patch_before)

    patched, positive_plain, patch_after = apply(model, clip, vae, _one_concept(), "a photo of a man")
    after, _ = lora.load_lora(patched, clip, tiny_lora.name, 1.0, 0.0)
    out_after = sample(after, positive_plain, negative, torch.zeros(LATENT), steps=3)
    assert _fired(patch_after)
    out_no_lora = sample(patched, positive_plain, negative, torch.zeros(LATENT), steps=3)
    assert not torch.equal(out_after, out_no_lora)
    assert torch.isfinite(out_before).all() and torch.isfinite(out_after).all()


def test_controlnet_on_conditioning(tiny, negative, tiny_controlnet):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _one_concept(), "a photo of a man")
    control = node("ControlNetLoader").load_controlnet(tiny_controlnet.name)[0]
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(5))
    controlled = node("ControlNetApply").apply_controlnet(positive, control, hint, 1.0)[0]
    out = sample(patched, controlled, negative, torch.zeros(LATENT), steps=3)
    assert _fired(patch)
    assert not torch.equal(out, sample(patched, positive, negative, torch.zeros(LATENT), steps=3))


class CountingAttention:
    """Stands in for another node's attn2 replace patch (e.g. IPAdapter)."""

    def __init__(self):
        self.calls = 0

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options; count on one object
        return self

    def __call__(self, q, k, v, extra):
        import comfy.ldm.modules.attention as attention
        self.calls += 1
        return attention.optimized_attention(q, k, v, extra["n_heads"])


def test_existing_attn2_patch_is_wrapped_and_still_called(tiny, negative):
    model, clip, vae = tiny
    other = model.clone()
    counters = {}
    probe_patch = apply(model, clip, vae, _one_concept(), "a photo of a man")[2]
    keys = [layer.key for layer in probe_patch.plan.segmentation_layers][:2]
    for key in keys:
        counters[key] = CountingAttention()
        other.set_model_attn2_replace(counters[key], key[0], key[1], key[2])
    patched, positive, patch = apply(other, clip, vae, _one_concept(), "a photo of a man")
    sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    assert _fired(patch)
    assert all(counter.calls == 3 for counter in counters.values()), {k: c.calls for k, c in counters.items()}
    for key in keys:  # and MagicFace still built its segmentation from those layers
        name = f"{key[0]}_{key[1]}.{key[2]}"
        assert patch.report()["calls"][("segmentation", name)] == 3
