"""Hypothesis drives the MagicFace nodes with random valid and invalid inputs.

Every combination ends in either a MagicFaceInputError (naming node, input and fix) or a
finite sampled latent: never another exception.
"""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integration.mf import node, pack_module, sample

PROMPT = "a man with a hat"
WORDS = ["man", "hat", "woman", "a man", "", "sunglasses"]


def _error_type():
    return pack_module("comfy_glue.errors").MagicFaceInputError


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
    weight = draw(st.one_of(st.floats(0.0, 5.0), st.floats(-1.0, 12.0)))
    return image, mask, weight


@st.composite
def scenarios(draw):
    """Mostly valid graphs (distinct prompt words, ordered fractions), with invalid values mixed in."""
    count = draw(st.integers(1, 2))
    words = draw(st.one_of(st.permutations(["man", "hat"]).map(lambda w: w[:count]),
                           st.lists(st.sampled_from(WORDS), min_size=count, max_size=count)))
    fractions = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3)))
    if draw(st.booleans()) and draw(st.booleans()):
        fractions = fractions[::-1]
    layers = draw(st.sampled_from(["paper", "paper", "all decoder", "custom"]))
    custom = draw(st.sampled_from(["output_2", "output_99", "nonsense"])) if layers == "custom" else ""
    mask_settings = (draw(st.floats(0, 1)), draw(st.integers(-4, 4)), draw(st.floats(0, 3)), draw(st.booleans()))
    return ([(*draw(concept_inputs()), word) for word in words], fractions, mask_settings, draw(st.booleans()),
            layers, custom)


def _run(tiny, negative, scenario):
    model, clip, vae = tiny
    concepts, (start, switch, end), (threshold, grow, feather, invert), semantic_cfg, layers, custom = scenario
    try:
        chain = None
        for image, mask, weight, words in concepts:
            if mask is not None:
                mask = node("MagicFaceConceptMask").make_mask(threshold, "value", grow, feather, invert, mask=mask)[0]
            chain = node("MagicFaceConceptLoader").load(image, words, weight, mask=mask, previous=chain)[0]
        schedule = node("MagicFaceStageScheduler").schedule(switch, start, end, layers, custom, 0.0, semantic_cfg,
                                                             "area")[0]
        patched, positive, _ = node("MagicFaceApply").apply(model, clip, vae, PROMPT, concepts=chain,
                                                            schedule=schedule, reference_size=64)
    except _error_type() as error:
        assert "Fix:" in str(error) and str(error).startswith("[MagicFace")
        return "clean error"
    out = sample(patched, positive, negative, torch.zeros(1, 4, 8, 8), steps=2)
    assert torch.isfinite(out).all()
    return "finite output"


def test_nodes_fail_cleanly_or_produce_finite_output(tiny, negative):
    outcomes = []

    @settings(max_examples=14, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(scenario=scenarios())
    def check(scenario):
        outcomes.append(_run(tiny, negative, scenario))

    check()
    # the fuzzing must reach both ends: validation errors and real sampling runs
    assert {"clean error", "finite output"} <= set(outcomes), outcomes
