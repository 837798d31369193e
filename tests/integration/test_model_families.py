"""SD2.x-v and SDXL UNets, and the reference code's own schedule ("reference mode")."""
from types import SimpleNamespace

import pytest
import torch

from .mf import apply, concepts_from, injected_calls, pack_module, sample, schedule, synthetic_concept

# SD 2.1's UNet layout as ComfyUI detects it (4 levels, attention at the first 3).
SD21_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                 use_linear_in_transformer=True, context_dim=1024, num_head_channels=64,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
# SDXL base's UNet layout (3 levels, attention from the second on, 2 and 10 transformer blocks deep).
SDXL_BASE_UNET = dict(SD21_UNET, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], context_dim=2048,
                      transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                      transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], adm_in_channels=2816,
                      num_classes="sequential")


def glue(module):
    return pack_module(f"comfy_glue.{module}")


def _plan_for(model_patcher, context_dim, pooled_dim=None, concepts=2, seed=0, segmentation_set="all layers"):
    """A MagicFacePlan built by the pack's build_plan from random references (these tiny UNets
    come without a CLIP and a VAE)."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(concepts, 64, 64)
    masks[:, 8:56, 16:48] = 1
    references = glue("builder").ReferenceBatch(
        images=None, latents=torch.randn(concepts, 4, 8, 8, generator=generator),
        context=torch.randn(concepts, 77, context_dim, generator=generator),
        pooled=None if pooled_dim is None else torch.randn(concepts, pooled_dim, generator=generator),
        concat=None, size=64)
    named = [glue("concepts").Concept(image=torch.zeros(1, 1, 3), mask=masks[i], words=("a", "b")[i], weight=2.0,
                                      reference_prompt="") for i in range(concepts)]
    schedule = glue("schedule").StageSchedule(ca_scale=0.6, segmentation_layers=segmentation_set)
    tokens = [(2 + 3 * i,) for i in range(concepts)]
    return glue("builder").build_plan(model_patcher, named, schedule, references, tokens, seed=seed)


@pytest.fixture(scope="module")
def tiny_sdxl_refiner_model(comfy_host):
    from harness.tiny_models import build_model_patcher
    return build_model_patcher("sdxl_refiner")


@pytest.mark.parametrize("family", ["sd2v", "sdxl", "sdxl_refiner"])
def test_unet_families(family, request):
    model = request.getfixturevalue(f"tiny_{family}_model")
    context_dim, pooled_dim = {"sd2v": (1024, None), "sdxl": (2048, 1280), "sdxl_refiner": (1280, 1280)}[family]
    generator = torch.Generator().manual_seed(1)
    extra = {} if pooled_dim is None else {"pooled_output": torch.randn(1, pooled_dim, generator=generator)}
    positive = [[torch.randn(1, 77, context_dim, generator=generator), dict(extra)]]
    negative = [[torch.randn(1, 77, context_dim, generator=generator), dict(extra)]]
    patched = model.clone()
    patch = glue("patch").MagicFacePatch(_plan_for(model, context_dim, pooled_dim))
    patch.install(patched)
    latent = torch.zeros(1, 4, 16, 16)
    out = sample(patched, positive, negative, latent, steps=4)
    report = patch.report()
    names = {layer.name for layer in patch.plan.injection_layers}
    assert set(injected_calls(report, "rsa")) == names and set(injected_calls(report, "rba")) == names
    assert torch.isfinite(out).all()
    assert not torch.equal(out, sample(model, positive, negative, latent, steps=4))


def test_reference_mode_layers_are_the_reference_codes(comfy_host):
    """On SD 2.1's real layout the 'paper' preset patches output blocks 6..11 (reference layer_idx 10..15)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    unet = UNetModel(**SD21_UNET, device="meta", operations=comfy.ops.disable_weight_init)
    layers = glue("layers")
    chosen = layers.select_injection_layers(layers.list_attention_layers(unet), "paper")
    assert [layer.key for layer in chosen] == [("output", i, 0) for i in range(6, 12)]
    segmentation = layers.select_segmentation_layers(layers.list_attention_layers(unet))
    # the reference segmentation reads 5 layers at 32x32, 5 at 16x16 and the 8x8 middle block
    assert sorted(layer.factor for layer in segmentation) == [2] * 5 + [4] * 5 + [8]


def test_sdxl_layer_sets(comfy_host):
    """'paper' on SDXL: decoder self-attention at its two finest attention levels (output blocks 0..5).
    Segmentation: every cross-attention layer but the finest level's, as on SD 2.1 (the 60 at 32x32)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    unet = UNetModel(**SDXL_BASE_UNET, device="meta", operations=comfy.ops.disable_weight_init)
    layers = glue("layers")
    found = layers.list_attention_layers(unet)
    assert len(found) == 70 and {layer.factor for layer in found} == {2, 4}
    chosen = layers.select_injection_layers(found, "paper")
    assert sorted({layer.key[1] for layer in chosen}) == [0, 1, 2, 3, 4, 5] and len(chosen) == 36
    segmentation = layers.select_segmentation_layers(found)
    assert len(segmentation) == 60 and {layer.factor for layer in segmentation} == {4}
    lean = layers.select_segmentation_layers(found, "one per block")
    assert [layer.key for layer in lean] == [("input", 7, 0), ("input", 8, 0), ("middle", 0, 0),
                                             ("output", 0, 0), ("output", 1, 0), ("output", 2, 0)]


def test_one_per_block_is_the_whole_set_where_blocks_hold_one_transformer(comfy_host):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    layers = glue("layers")
    found = layers.list_attention_layers(UNetModel(**SD21_UNET, device="meta", operations=comfy.ops.disable_weight_init))
    assert layers.select_segmentation_layers(found, "one per block") == layers.select_segmentation_layers(found)
    with pytest.raises(ValueError, match=r"\[MagicFace Stage Scheduler\] input 'segmentation_layers'"):
        layers.select_segmentation_layers(found, "every other")


def test_one_per_block_segments_from_first_transformers_only(comfy_host):
    """On 2-deep blocks the lean set reads half the layers; its hooks fire there every call and
    nowhere else, and the result moves away from the exact set's (other attention maps)."""
    from harness.tiny_models import build_model_patcher
    model = build_model_patcher("sdxl_deep")
    generator = torch.Generator().manual_seed(2)
    pooled = {"pooled_output": torch.randn(1, 1280, generator=generator)}
    positive = [[torch.randn(1, 77, 2048, generator=generator), dict(pooled)]]
    negative = [[torch.randn(1, 77, 2048, generator=generator), dict(pooled)]]
    outputs, reports = {}, {}
    for layer_set in ("all layers", "one per block"):
        patched = model.clone()
        patch = glue("patch").MagicFacePatch(_plan_for(model, 2048, 1280, segmentation_set=layer_set))
        patch.install(patched)
        outputs[layer_set] = sample(patched, positive, negative, torch.zeros(1, 4, 16, 16), steps=4)
        reports[layer_set] = patch.report()
    segmented = {layer_set: {name: n for (kind, name), n in report["calls"].items()
                             if kind == "segmentation" and name != "step"}
                 for layer_set, report in reports.items()}
    assert len(segmented["all layers"]) == 8 and set(segmented["all layers"].values()) == {4}
    assert segmented["one per block"] == {name: 4 for name in segmented["all layers"] if name.endswith(".0")}
    assert len(segmented["one per block"]) == 4
    assert reports["one per block"]["calls"][("segmentation", "step")] == 4
    assert torch.isfinite(outputs["one per block"]).all()
    assert not torch.equal(outputs["one per block"], outputs["all layers"])


def test_reference_mode_switch_step(tiny, negative):
    """50 DDIM steps with the default switch: RSA on steps 0..20, RBA from step 21, as the reference code."""
    model, clip, vae = tiny
    image, mask = synthetic_concept(4)
    patched, positive, patch = apply(model, clip, vae, concepts_from([(image, mask, "man", 3.0)]),
                                     "a photo of a man", schedule(mask_mode="reference"), reference_size=64)
    sample(patched, positive, negative, torch.zeros(1, 4, 8, 8), steps=50, sampler="ddim", scheduler="ddim_uniform")
    report = patch.report()
    assert len(report["rsa_sigmas"]) == 21 and len(report["rba_sigmas"]) == 29
    assert all(n == 21 for n in injected_calls(report, "rsa").values())
    assert all(n == 29 for n in injected_calls(report, "rba").values())


def test_segmentation_falls_back_to_the_only_attention_level(comfy_host):
    layers = glue("layers")
    single = [layers.AttentionLayer(("output", index, 0), 2, True) for index in range(3)]
    assert layers.select_segmentation_layers(single) == single
    assert layers.select_segmentation_layers([layers.AttentionLayer(("input", 1, 0), 1, False)]) == []


def test_a_clip_of_another_family_is_a_clear_error(tiny, tiny_sdxl_model):
    _, clip, vae = tiny  # SD1.5's CLIP-L (768 wide) with an SDXL UNet (2048)
    image, mask = synthetic_concept(0)
    with pytest.raises(ValueError, match=r"\[MagicFace Apply\] input 'clip': its text features are 768 wide, "
                                         r"but this model's cross-attention takes 2048"):
        apply(tiny_sdxl_model, clip, vae, concepts_from([(image, mask, "man", 3.0)]), "a photo of a man")


def test_a_model_without_unet_attention_is_a_clear_error(tiny):
    """Flux, SD3 and other transformer models have no UNet attention blocks to patch."""
    _, clip, vae = tiny
    model = tiny[0].clone()  # a patcher of its own: the shared model object stays untouched
    model.model = SimpleNamespace(diffusion_model=torch.nn.Linear(4, 4))
    image, mask = synthetic_concept(0)
    with pytest.raises(ValueError, match=r"\[MagicFace Apply\] input 'model': Linear is not a UNet with attention "
                                         r"blocks .*Flux, SD3 and other transformer models are not supported yet"):
        apply(model, clip, vae, concepts_from([(image, mask, "man", 3.0)]), "a photo of a man")


def test_one_per_block_through_the_nodes_equals_the_exact_set_on_sd15(tiny, negative):
    model, clip, vae = tiny
    image, mask = synthetic_concept(5)
    outputs = []
    for layer_set in ("all layers", "one per block"):
        patched, positive, patch = apply(model, clip, vae, concepts_from([(image, mask, "man", 3.0)]),
                                         "a photo of a man", schedule(segmentation_layers=layer_set))
        assert len(patch.plan.segmentation_layers) == 7  # the tiny SD1.5's layers below full resolution
        outputs.append(sample(patched, positive, negative, torch.zeros(1, 4, 16, 16), steps=3))
    assert torch.equal(*outputs)
