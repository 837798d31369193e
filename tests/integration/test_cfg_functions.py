"""MagicFace's semantic CFG beside other nodes' CFG functions.

A cfg function set before MagicFace Apply is wrapped (it receives the modulated cond). One set
after it replaces MagicFace's (RescaleCFG, PerpNeg and most custom CFG nodes keep no previous
function); MagicFace's post-CFG backstop then adds the semantic modulation to that node's
result, on hosts that give post-CFG functions the CFG scale, and says so where they do not.
"""
import logging

import pytest
import torch

from .mf import (apply, apply_with_other, assert_stage_counts, encode, holds_references, patch_of,
                 relative_difference, run_node, sample, schedule, two_concepts)

STEPS = 3
LATENT = (1, 4, 32, 24)
PROMPT = "a photo of a man"


def _guided(report):
    calls = report["calls"]
    return calls.get(("guidance", "step"), 0) + calls.get(("guidance", "after another cfg function"), 0)


@pytest.fixture(scope="module")
def post_cfg_gets_scale(tiny):
    """Whether this host passes the CFG scale to post-CFG functions (newer hosts do)."""
    seen = []
    probe = tiny[0].clone()
    probe.set_model_sampler_post_cfg_function(lambda args: seen.append("cond_scale" in args) or args["denoised"])
    positive = encode(tiny[1], PROMPT)
    sample(probe, positive, positive, torch.zeros(1, 4, 16, 16), steps=1)
    return seen[0]


def _plain_cfg(model):
    """A stand-in for a node that sets its own cfg function (here: plain CFG) and keeps none."""
    patched = model.clone()
    patched.set_model_sampler_cfg_function(lambda a: a["uncond"] + (a["cond"] - a["uncond"]) * a["cond_scale"])
    return patched


def test_a_cfg_function_set_after_magicface_keeps_semantic_cfg(tiny, negative, post_cfg_gets_scale, caplog):
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)
    alone = sample(patched, positive, negative, torch.zeros(LATENT), steps=STEPS)
    assert patch.report()["calls"][("guidance", "step")] == STEPS
    with caplog.at_level(logging.WARNING, logger="MagicFace"):
        replaced = sample(_plain_cfg(patched), positive, negative, torch.zeros(LATENT), steps=STEPS)
    calls = patch.report()["calls"]
    off = apply(model, clip, vae, two_concepts(), PROMPT, sched=schedule(semantic_cfg=False))
    plain_cfg = sample(off[0], off[1], negative, torch.zeros(LATENT), steps=STEPS)
    assert relative_difference(alone, plain_cfg) > 1e-2  # semantic CFG has an effect to keep
    if post_cfg_gets_scale:
        assert calls[("guidance", "after another cfg function")] == STEPS
        assert relative_difference(replaced, alone) < 1e-5
    else:
        assert calls[("guidance", "replaced")] == STEPS and ("guidance", "step") not in calls
        assert "replaced the CFG function" in caplog.text
        assert relative_difference(replaced, plain_cfg) < 1e-5
    assert not torch.equal(replaced, sample(model, positive, negative, torch.zeros(LATENT), steps=STEPS))


def test_a_cfg_function_set_before_magicface_is_wrapped(tiny, negative):
    model, clip, vae = tiny
    patched, positive, patch = apply(_plain_cfg(model), clip, vae, two_concepts(), PROMPT)
    wrapped = sample(patched, positive, negative, torch.zeros(LATENT), steps=STEPS)
    assert patch.report()["calls"][("guidance", "step")] == STEPS
    alone = apply(model, clip, vae, two_concepts(), PROMPT)
    expected = sample(alone[0], alone[1], negative, torch.zeros(LATENT), steps=STEPS)
    assert relative_difference(wrapped, expected) < 1e-5


@pytest.mark.parametrize("other_first", [True, False])
def test_rescale_cfg_in_either_order(tiny, negative, post_cfg_gets_scale, other_first):
    rescale = lambda m: run_node("RescaleCFG", model=m, multiplier=0.7)[0]  # noqa: E731
    patched, positive, patch = apply_with_other(tiny, rescale, other_first)
    sample(patched, positive, negative, torch.zeros(LATENT), steps=STEPS)
    calls = patch.report()["calls"]
    if other_first or post_cfg_gets_scale:
        assert _guided(patch.report()) == STEPS
    else:
        assert calls[("guidance", "replaced")] == STEPS


@pytest.mark.parametrize("other_first", [True, False])
def test_perp_neg_baseline_pass_stays_plain(tiny, negative, post_cfg_gets_scale, other_first):
    empty = encode(tiny[1], "")
    perp_neg = lambda m: run_node("PerpNeg", model=m, empty_conditioning=empty, neg_scale=1.0)[0]  # noqa: E731
    patched, positive, patch = apply_with_other(tiny, perp_neg, other_first)
    out = sample(patched, positive, negative, torch.zeros(LATENT), steps=STEPS)
    report = patch.report()
    # PerpNeg calls the model once more per step with the empty prompt: a baseline like uncond.
    assert report["calls"][("guidance pass", "plain")] == STEPS
    assert ("guidance pass", "magicface") not in report["calls"]
    assert _guided(report) == (STEPS if other_first or post_cfg_gets_scale else 0)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, sample(perp_neg(tiny[0]), positive, negative, torch.zeros(LATENT), steps=STEPS))


def test_perp_neg_guider_gets_semantic_cfg_from_the_backstop(tiny, negative):
    import nodes
    if "PerpNegGuider" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this host has no PerpNegGuider node (added after the 2024 CI host)")
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)
    guider = run_node("PerpNegGuider", model=patched, positive=positive, negative=negative,
                      empty_conditioning=encode(clip, ""), cfg=5.0, neg_scale=1.0)[0]
    sigmas = run_node("BasicScheduler", model=patched, scheduler="normal", steps=STEPS, denoise=1.0)[0]
    out = run_node("SamplerCustomAdvanced", noise=run_node("RandomNoise", noise_seed=0)[0], guider=guider,
                   sampler=run_node("KSamplerSelect", sampler_name="euler")[0], sigmas=sigmas,
                   latent_image={"samples": torch.zeros(LATENT)})[0]["samples"]
    report = patch.report()
    assert_stage_counts(report, patch)
    # One call per step on [positive, negative, empty]: the empty prompt's rows stay plain.
    assert report["calls"][("guidance", "after another cfg function")] == STEPS
    assert not any(kind == "guidance pass" for kind, _ in report["calls"])
    assert torch.isfinite(out).all()


def test_dual_cfg_guider_is_refused_clearly(tiny, negative):
    """DualCFGGuider batches [negative, middle, positive]: the first slot, where every other
    sampler puts the positive prompt, holds the negative one."""
    import nodes
    if "DualCFGGuider" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this host has no DualCFGGuider node (added after the 2024 CI host)")
    model, clip, vae = tiny
    patched, positive, patch = apply(model, clip, vae, two_concepts(), PROMPT)
    inputs = dict(model=patched, cond1=positive, cond2=encode(clip, "a photo"), negative=negative, cfg_conds=5.0,
                  cfg_cond2_negative=2.0)
    if "style" in nodes.NODE_CLASS_MAPPINGS["DualCFGGuider"].INPUT_TYPES()["required"]:  # newer hosts only
        inputs["style"] = "regular"
    guider = run_node("DualCFGGuider", **inputs)[0]
    sigmas = run_node("BasicScheduler", model=patched, scheduler="normal", steps=STEPS, denoise=1.0)[0]
    with pytest.raises(ValueError, match=r"\[MagicFace Apply\] input 'positive': the sampler passes MagicFace "
                                         r"Apply's prompt in another slot"):
        run_node("SamplerCustomAdvanced", noise=run_node("RandomNoise", noise_seed=0)[0], guider=guider,
                 sampler=run_node("KSamplerSelect", sampler_name="euler")[0], sigmas=sigmas,
                 latent_image={"samples": torch.zeros(LATENT)})
    assert not holds_references(patch_of(patched))
