"""MagicFace Apply on the tiny SD1.5 checkpoint: every hook fires where and when it should."""
import pytest
import torch

from .mf import apply, assert_stage_counts, concepts_from, injected_calls, run_node, sample, schedule, synthetic_concept

LATENT = (1, 4, 16, 16)


def _one_concept():
    image, mask = synthetic_concept(0)
    return concepts_from([(image, mask, "man", 3.0)])


def test_single_concept_rsa_then_rba_and_changes_output(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _one_concept(), "a photo of a man")
    latent = torch.zeros(LATENT)
    out = sample(patched, positive, negative, latent, steps=5)
    report = patch.report()
    assert_stage_counts(report, patch)
    assert len(report["rsa_sigmas"]) == 2 and len(report["rba_sigmas"]) == 3  # 5 steps, switch at 0.42
    assert report["calls"][("guidance", "step")] == 5
    base = sample(model, positive, negative, latent, steps=5)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, base)


def test_input_model_is_not_mutated(tiny):
    model, clip, vae = tiny
    before = dict(model.model_options.get("transformer_options", {}))
    patched, _, _ = apply(model, clip, vae, _one_concept(), "a photo of a man")
    assert patched is not model
    assert model.model_options.get("transformer_options", {}) == before
    assert "model_function_wrapper" not in model.model_options


@pytest.mark.parametrize("case", ["no concepts", "all masks empty, semantic cfg off"])
def test_magicface_off_is_bit_exact(tiny, negative, case):
    model, clip, vae = tiny
    if case == "no concepts":
        concepts, sched = None, schedule()
    else:
        image, mask = synthetic_concept(1)
        concepts, sched = concepts_from([(image, mask * 0, "man", 3.0)]), schedule(semantic_cfg=False)
    patched, positive, patch = apply(model, clip, vae, concepts, "a photo of a man", sched)
    assert patch is None
    latent = torch.zeros(LATENT)
    assert torch.equal(sample(patched, positive, negative, latent, steps=3),
                       sample(model, positive, negative, latent, steps=3))


def test_empty_masks_with_semantic_cfg_leave_attention_plain(tiny, negative):
    """Masks that vanish keep the host's attention bit-exact; only guidance acts."""
    model, clip, vae = tiny
    image, mask = synthetic_concept(2)
    patched, positive, patch = apply(model, clip, vae, concepts_from([(image, mask * 0, "man", 3.0)]),
                                     "a photo of a man", schedule(semantic_cfg=True))
    sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    report = patch.report()
    assert not injected_calls(report, "rsa") and not injected_calls(report, "rba")
    assert report["calls"][("guidance", "step")] == 3


@pytest.mark.parametrize("sampler,scheduler,calls_per_step", [("heun", "normal", 2), ("dpmpp_2m", "karras", 1)])
def test_samplers_schedule_by_noise_level(tiny, negative, sampler, scheduler, calls_per_step):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _one_concept(), "a photo of a man")
    out = sample(patched, positive, negative, torch.zeros(LATENT), steps=4, sampler=sampler, scheduler=scheduler)
    report = patch.report()
    assert_stage_counts(report, patch)
    calls = len(report["rsa_sigmas"]) + len(report["rba_sigmas"])
    assert calls == (2 * 4 - 1 if calls_per_step == 2 else 4)  # heun skips its 2nd call on the last step
    assert torch.isfinite(out).all()


def test_cfg_one_has_no_uncond_branch(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _one_concept(), "a photo of a man")
    out = sample(patched, positive, negative, torch.zeros(LATENT), steps=3, cfg=1.0)
    assert_stage_counts(patch.report(), patch)
    assert torch.isfinite(out).all()


def test_batch_of_two_non_square(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _one_concept(), "a photo of a man")
    latent = torch.zeros(2, 4, 16, 24)
    out = sample(patched, positive, negative, latent, steps=3)
    assert_stage_counts(patch.report(), patch)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    segmentation = patch.report()["segmentation"]
    assert len(segmentation) == 2 and tuple(segmentation[0].labels.shape) == (8, 12)


def test_512x768_and_long_prompt(tiny, negative):
    model, clip, vae = tiny
    filler = ", ".join(["a sunny park with tall green trees and a blue sky"] * 9)
    prompt = f"{filler}, a portrait of a man"
    tokens = clip.tokenize(prompt)
    assert sum(len(chunk) for chunk in tokens["l"]) > 77  # the concept word sits beyond the first chunk
    patched, positive, patch = apply(model, clip, vae, _one_concept(), prompt)
    assert min(patch.plan.concept_tokens[0]) >= 77
    out = sample(patched, positive, negative, torch.zeros(1, 4, 96, 64), steps=2)
    assert_stage_counts(patch.report(), patch)
    assert torch.isfinite(out).all()


def test_img2img_denoise(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _one_concept(), "a photo of a man")
    start = vae.encode(torch.rand(1, 128, 128, 3))
    out = sample(patched, positive, negative, start, steps=5, denoise=0.6)
    report = patch.report()
    assert_stage_counts(report, patch)
    # denoise 0.6 starts 40% into the schedule: past the 0.42 switch's noise level after one step at most
    assert len(report["rsa_sigmas"]) + len(report["rba_sigmas"]) == 5 and len(report["rsa_sigmas"]) <= 1
    assert max(report["rsa_sigmas"] + report["rba_sigmas"]) < patch.plan.sigma_start
    assert torch.isfinite(out).all()


def test_requeue_is_deterministic(tiny, negative):
    model, clip, vae = tiny
    patched, positive, _ = apply(model, clip, vae, _one_concept(), "a photo of a man")
    first = sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    second = sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    assert torch.equal(first, second)


def test_hires_fix_second_pass_on_a_larger_latent(tiny, negative):
    """The usual two-pass graph: sample, upscale the latent, sample again at denoise 0.5 with the
    same MagicFace model. The second pass is a run of its own on the larger frame (the first
    run's segmentations, made on the smaller grid, are not carried over)."""
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, _one_concept(), "a photo of a man")
    first = sample(patched, positive, negative, torch.zeros(LATENT), steps=3)
    upscaled = run_node("LatentUpscale", samples={"samples": first}, upscale_method="nearest-exact",
                        width=LATENT[3] * 12, height=LATENT[2] * 12, crop="disabled")[0]["samples"]
    second = sample(patched, positive, negative, upscaled, steps=4, denoise=0.5)
    report = patch.report()
    assert_stage_counts(report, patch)
    assert len(report["rsa_sigmas"]) + len(report["rba_sigmas"]) == 4
    assert all(tuple(labels.shape[-2:]) == (LATENT[2] * 3 // 4, LATENT[3] * 3 // 4)
               for _, labels in report["label_history"])
    assert torch.isfinite(second).all() and second.shape[-2:] == upscaled.shape[-2:]
