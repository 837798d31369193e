"""Hypothesis drives the MagicFace nodes with random valid and invalid inputs.

Every combination ends in either a MagicFaceInputError (naming node, input and fix) or a
finite sampled latent: never another exception.
"""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.mf import node, sample

PROMPT = "a man with a hat"
WORDS = ["man", "hat", "woman", "a man", "", "sunglasses"]


def _error_type():
    import sys
    return sys.modules["ComfyUI-MagicFace.comfy_glue.errors"].MagicFaceInputError


@st.composite
def concept_inputs(draw):
    height, width = draw(st.integers(8, 40)), draw(st.integers(8, 40))
    channels = draw(st.sampled_from([1, 3, 4]))
    batch = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2 ** 16))
    image = torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(seed))
    mask_kind = draw(st.sampled_from(["none", "empty", "full", "random", "other size"]))
    if mask_kind == "none":
        mask = None
    elif mask_kind == "other size":
        mask = torch.ones(1, draw(st.integers(4, 50)), draw(st.integers(4, 50)))
    else:
        mask = {"empty": torch.zeros, "full": torch.ones, "random": torch.rand}[mask_kind](1, height, width)
    return image, mask, draw(st.sampled_from(WORDS)), draw(st.floats(-1.0, 12.0))


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(concepts=st.lists(concept_inputs(), min_size=1, max_size=3),
       fractions=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
       mask_settings=st.tuples(st.floats(0, 1), st.integers(-4, 4), st.floats(0, 3), st.booleans()),
       semantic_cfg=st.booleans(), layers=st.sampled_from(["paper", "all decoder", "custom"]),
       custom=st.sampled_from(["output_2", "output_99", "nonsense", ""]))
def test_nodes_fail_cleanly_or_produce_finite_output(tiny, negative, concepts, fractions, mask_settings,
                                                     semantic_cfg, layers, custom):
    model, clip, vae = tiny
    threshold, grow, feather, invert = mask_settings
    try:
        chain = None
        for image, mask, words, weight in concepts:
            if mask is not None:
                mask = node("MagicFaceConceptMask").make_mask(threshold, "value", grow, feather, invert, mask=mask)[0]
            chain = node("MagicFaceConceptLoader").load(image, words, weight, mask=mask, previous=chain)[0]
        start, switch, end = fractions
        schedule = node("MagicFaceStageScheduler").schedule(switch, start, end, layers, custom, 0.0, semantic_cfg,
                                                             "area")[0]
        patched, positive, _ = node("MagicFaceApply").apply(model, clip, vae, PROMPT, concepts=chain,
                                                            schedule=schedule, reference_size=64)
    except _error_type() as error:
        assert "Fix:" in str(error) and str(error).startswith("[MagicFace")
        return
    out = sample(patched, positive, negative, torch.zeros(1, 4, 8, 8), steps=2)
    assert torch.isfinite(out).all()
