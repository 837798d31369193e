"""The approximate mode: reference features made at one step in k and reused in between.

Exact mode (k = 1) makes them in every model call. With k > 1 the steps are counted by noise
level, so samplers that call the model twice per step refresh on the same schedule; coupled and
separate reference passes reuse alike; a new run never starts from an old run's features.
"""
import pytest
import torch

from .mf import (apply, assert_close, concepts_from, injected_calls, pack_module, sample, schedule, separate_pass_only,
                 synthetic_concept)

LATENT = (1, 4, 16, 16)
PROMPT = "a photo of a man"


def _concepts():
    (image_a, mask_a), (image_b, mask_b) = synthetic_concept(21), synthetic_concept(22)
    return concepts_from([(image_a, mask_a, "man", 2.5), (image_b, mask_b, "photo", 2.0)])


def _patched(tiny, every):
    model, clip, vae = tiny
    return apply(model, clip, vae, _concepts(), PROMPT, sched=schedule(reference_every=every))


def _reference_calls(patch):
    calls = patch.report()["calls"]
    return {kind: calls.get(("references", kind), 0) for kind in ("coupled", "separate pass", "reused")}


def test_every_k_steps_refreshes_on_schedule_and_patches_every_step(tiny, negative):
    exact_model, positive, exact_patch = _patched(tiny, 1)
    exact = sample(exact_model, positive, negative, torch.zeros(LATENT), steps=5)
    assert _reference_calls(exact_patch) == {"coupled": 5, "separate pass": 0, "reused": 0}

    fast_model, positive, fast_patch = _patched(tiny, 2)
    fast = sample(fast_model, positive, negative, torch.zeros(LATENT), steps=5)
    assert _reference_calls(fast_patch) == {"coupled": 3, "separate pass": 0, "reused": 2}  # steps 1, 3, 5
    # RSA/RBA still run in every step and layer; only the references' rows are skipped.
    for stage in ("rsa", "rba"):
        assert injected_calls(fast_patch.report(), stage) == injected_calls(exact_patch.report(), stage)
    assert torch.isfinite(fast).all()
    assert not torch.equal(fast, exact)  # stale features at steps 2 and 4


def test_reuse_is_the_same_through_the_separate_pass(tiny, negative):
    patched, positive, patch = _patched(tiny, 3)
    coupled = sample(patched, positive, negative, torch.zeros(LATENT), steps=5)
    with separate_pass_only():
        separate = sample(patched, positive, negative, torch.zeros(LATENT), steps=5)
    assert _reference_calls(patch) == {"coupled": 0, "separate pass": 2, "reused": 3}  # steps 1 and 4
    assert_close(coupled, separate)


def test_steps_are_counted_by_noise_level_not_by_calls(tiny, negative):
    # heun calls the model twice per step (at sigma_i, then at sigma_i+1), except the last step.
    exact_model, positive, exact_patch = _patched(tiny, 1)
    sample(exact_model, positive, negative, torch.zeros(LATENT), steps=4, sampler="heun")
    calls = _reference_calls(exact_patch)["coupled"]
    assert calls == 7  # every call makes its own features in exact mode
    fast_model, positive, fast_patch = _patched(tiny, 2)
    sample(fast_model, positive, negative, torch.zeros(LATENT), steps=4, sampler="heun")
    # 4 noise levels: fresh at the 1st and 3rd, every other call reuses.
    assert _reference_calls(fast_patch) == {"coupled": 2, "separate pass": 0, "reused": calls - 2}


@pytest.mark.parametrize("every", [2, 10])
def test_a_new_run_never_reuses_the_last_runs_features(tiny, negative, every):
    patched, positive, patch = _patched(tiny, every)
    first = sample(patched, positive, negative, torch.zeros(LATENT), steps=4)
    # Another latent in between: if its features leaked into the next run, that run would differ.
    sample(patched, positive, negative, torch.randn(LATENT, generator=torch.Generator().manual_seed(3)), steps=4)
    again = sample(patched, positive, negative, torch.zeros(LATENT), steps=4)
    assert torch.equal(first, again)
    assert _reference_calls(patch)["coupled"] == (2 if every == 2 else 1)


def test_scheduler_rejects_a_step_count_outside_its_range():
    from .mf import pack_module
    errors = pack_module("comfy_glue.errors")
    with pytest.raises(errors.MagicFaceInputError, match="reference_every"):
        schedule(reference_every=-1)


@pytest.mark.parametrize("speed, expected", [("exact", (1, "all layers")), ("balanced", (2, "all layers")),
                                             ("fast", (4, "one per block"))])
def test_the_speed_preset_sets_both_levers(tiny, speed, expected):
    model, clip, vae = tiny
    layers = pack_module("comfy_glue.layers")
    _, _, patch = apply(model, clip, vae, _concepts(), PROMPT, sched=schedule(speed=speed))
    found = layers.list_attention_layers(model.model.diffusion_model)
    assert patch.plan.reference_every == expected[0]
    assert patch.plan.segmentation_layers == tuple(layers.select_segmentation_layers(found, expected[1]))


def test_set_levers_override_the_preset(tiny):
    model, clip, vae = tiny
    sched = schedule(speed="fast", reference_every=1, segmentation_layers="all layers")
    _, _, patch = apply(model, clip, vae, _concepts(), PROMPT, sched=sched)
    _, _, exact = apply(model, clip, vae, _concepts(), PROMPT, sched=schedule(speed="exact"))
    assert patch.plan.reference_every == 1 and patch.plan.segmentation_layers == exact.plan.segmentation_layers
