"""MagicFace with ComfyUI's own model-patching nodes, applied before or after MagicFace Apply.

Nodes that keep one attention token per pixel compose (every MagicFace hook still fires at
every step); Kohya Deep Shrink resizes the features of the early steps, and MagicFace follows
the resized grid; HyperTile and ToMe re-cut the tokens, and MagicFace says so by name.
"""
import pytest
import torch

from .mf import apply_with_other, assert_stage_counts, pack_module, patch_of, run_node, sample

STEPS = 3

COMPOSING = {
    "FreeU": lambda m: run_node("FreeU", model=m, b1=1.1, b2=1.2, s1=0.9, s2=0.2)[0],
    "FreeU_V2": lambda m: run_node("FreeU_V2", model=m, b1=1.1, b2=1.2, s1=0.9, s2=0.2)[0],
    "RescaleCFG": lambda m: run_node("RescaleCFG", model=m, multiplier=0.7)[0],
    "ModelSamplingDiscrete lcm": lambda m: run_node("ModelSamplingDiscrete", model=m, sampling="lcm", zsnr=False)[0],
    "DifferentialDiffusion": lambda m: run_node("DifferentialDiffusion", model=m)[0],
}
RETOKENISING = {
    "HyperTile": (lambda m: run_node("HyperTile", model=m, tile_size=256, swap_size=2, max_depth=0,
                                    scale_depth=False)[0], "splits it into tiles"),
    "TomePatchModel": (lambda m: run_node("TomePatchModel", model=m, ratio=0.3)[0], "merges its tokens"),
}


def _patched(tiny, other, order):
    return apply_with_other(tiny, other, other_first=order == "other first")


@pytest.mark.parametrize("order", ["other first", "magicface first"])
@pytest.mark.parametrize("name", list(COMPOSING))
def test_nodes_that_keep_pixel_tokens_compose(tiny, negative, name, order):
    patched, positive, patch = _patched(tiny, COMPOSING[name], order)
    latent = torch.zeros(1, 4, 32, 24)
    out = sample(patched, positive, negative, latent, steps=STEPS)
    report = patch.report()
    assert_stage_counts(report, patch)
    assert len(report["rsa_sigmas"]) + len(report["rba_sigmas"]) == STEPS
    without_magicface = COMPOSING[name](tiny[0])
    assert torch.isfinite(out).all()
    assert not torch.equal(out, sample(without_magicface, positive, negative, latent, steps=STEPS))


# The first step only (RSA), or every step (RBA regions then come on the resized grids too).
@pytest.mark.parametrize("order, end_percent", [("other first", 0.35), ("magicface first", 1.0)])
def test_deep_shrink_layers_follow_the_resized_grid(tiny, negative, monkeypatch, order, end_percent):
    hooks = pack_module("comfy_glue.attention_hooks")
    layers = pack_module("comfy_glue.layers")
    resized = []

    def spy(latent_hw, factor, tokens):
        grid = layers.token_grid(latent_hw, factor, tokens)
        if grid != layers.layer_hw(latent_hw, factor):
            resized.append((factor, grid))
        return grid

    monkeypatch.setattr(hooks, "token_grid", spy)
    # Kohya Deep Shrink: features halved after input block 1 until end_percent of the schedule.
    deep_shrink = lambda m: run_node("PatchModelAddDownscale", model=m, block_number=1,  # noqa: E731
                                     downscale_factor=2.0, start_percent=0.0, end_percent=end_percent,
                                     downscale_after_skip=True, downscale_method="bicubic",
                                     upscale_method="bicubic")[0]
    patched, positive, patch = _patched(tiny, deep_shrink, order)
    out = sample(patched, positive, negative, torch.zeros(1, 4, 64, 48), steps=STEPS)
    report = patch.report()
    assert_stage_counts(report, patch)
    assert torch.isfinite(out).all()
    # The 32x24 and 16x12 layers between input block 1 and the decoder's last level (the
    # injection layers at 32x24 among them) run at half size while Deep Shrink acts.
    assert {grid for _, grid in resized} == {(16, 12), (8, 6)}, resized
    assert {factor for factor, _ in resized} & {layer.factor for layer in patch.plan.injection_layers}, resized
    history = report["label_history"]  # the resized step's maps were brought to the usual grid
    assert len(history) == STEPS and all(tuple(labels.shape[-2:]) == (32, 24) for _, labels in history)


@pytest.mark.parametrize("order", ["other first", "magicface first"])
@pytest.mark.parametrize("name", list(RETOKENISING))
def test_nodes_that_recut_tokens_get_a_clear_error(tiny, negative, name, order):
    errors = pack_module("comfy_glue.errors")
    other, problem = RETOKENISING[name]
    patched, positive, patch = _patched(tiny, other, order)
    with pytest.raises(errors.MagicFaceInputError, match=problem) as caught:
        sample(patched, positive, negative, torch.zeros(1, 4, 64, 48), steps=STEPS)
    message = str(caught.value)
    assert message.startswith("[MagicFace Apply] input 'model'") and "HyperTile" in message and "ToMe" in message
    assert "output_" in message  # names the layer where it happened
    assert patch_of(patched).active_run() is None  # the failed run was released
