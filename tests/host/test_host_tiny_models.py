"""The random tiny models: detected like the real thing, finite, effective."""
import time

import numpy as np
import pytest
import torch

from harness import txt2img


def _load(ckpt):
    import nodes
    with torch.inference_mode():
        return nodes.CheckpointLoaderSimple().load_checkpoint(ckpt.name)[:3]


def _assert_image_ok(image: np.ndarray):
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert np.isfinite(image.astype(np.float32)).all()
    assert image.std() > 1.0 and len(np.unique(image)) > 16, "image is (nearly) constant"


def test_checkpoint_detected_as_sd15(comfy_host, tiny_sd15_ckpt):
    import comfy.model_base
    import comfy.supported_models
    model, clip, vae = _load(tiny_sd15_ckpt)
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert clip is not None and vae is not None


def test_checkpoint_weights_all_finite_and_varied(tiny_sd15_ckpt):
    from safetensors.torch import load_file
    sd = load_file(str(tiny_sd15_ckpt))
    assert any(k.startswith("first_stage_model.taesd_decoder.") for k in sd)
    assert sum(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.") for k in sd) == 12 * 16
    for key, value in sd.items():
        assert torch.isfinite(value).all(), key
        if value.dim() >= 2:
            assert value.std() > 0, f"{key} is constant"


def test_unet_has_attention_at_full_and_half_resolution(comfy_host, tiny_sd15_ckpt):
    from comfy.ldm.modules.attention import SpatialTransformer
    unet = _load(tiny_sd15_ckpt)[0].model.diffusion_model
    x = torch.zeros(1, 4, 32, 32)
    seen = {}

    def hook(mod, args, out):
        seen[id(mod)] = (out.shape[-1], mod.transformer_blocks[0].attn2 is not None)

    blocks = [m for m in unet.modules() if isinstance(m, SpatialTransformer)]
    handles = [b.register_forward_hook(hook) for b in blocks]
    try:
        with torch.inference_mode():
            unet(x, torch.tensor([10.0]), context=torch.zeros(1, 77, 768))
    finally:
        for h in handles:
            h.remove()
    widths = {w for w, _ in seen.values()}
    assert {32, 16} <= widths, f"attention only at widths {widths}"
    assert any(w <= 16 and cross for w, cross in seen.values())


def test_unet_forward_is_finite_and_fast(comfy_host, tiny_sd15_ckpt):
    unet = _load(tiny_sd15_ckpt)[0].model.diffusion_model
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 32, 32, generator=gen), torch.randn(2, 77, 768, generator=gen)
    with torch.inference_mode():
        unet(x, torch.tensor([500.0, 500.0]), context=ctx)  # warm-up
        start = time.perf_counter()
        out = unet(x, torch.tensor([500.0, 500.0]), context=ctx)
        elapsed = time.perf_counter() - start
    print(f"tiny SD1.5 UNet, 32x32 latent, batch 2: {elapsed:.2f}s")
    assert torch.isfinite(out).all() and out.std() > 1e-3
    assert elapsed < 60, "tiny UNet unexpectedly slow (loose bound: CI CPUs are shared)"


def test_clip_text_encoder_is_real(comfy_host, tiny_sd15_ckpt):
    import nodes
    clip = _load(tiny_sd15_ckpt)[1]
    with torch.inference_mode():
        a = nodes.CLIPTextEncode().encode(clip, "a woman with a hat")[0][0][0]
        b = nodes.CLIPTextEncode().encode(clip, "an ink painting of a man")[0][0][0]
    assert a.shape == (1, 77, 768) and torch.isfinite(a).all()
    assert not torch.allclose(a, b), "text encoder ignores the prompt"


def test_vae_is_taesd_and_decodes_varied_images(comfy_host, tiny_sd15_ckpt):
    import comfy.taesd.taesd
    import nodes
    vae = _load(tiny_sd15_ckpt)[2]
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))}
    with torch.inference_mode():
        image = nodes.VAEDecode().decode(vae, latent)[0]
    assert image.shape == (1, 128, 128, 3)
    _assert_image_ok((image[0].numpy() * 255).round().astype(np.uint8))


def test_sd2v_model_is_v_prediction(tiny_sd2v_model):
    import comfy.model_sampling
    model = tiny_sd2v_model.model
    assert isinstance(model.model_sampling, comfy.model_sampling.V_PREDICTION)
    assert model.model_config.unet_config["context_dim"] == 1024
    with torch.inference_mode():
        out = model.diffusion_model(torch.randn(1, 4, 16, 16), torch.tensor([10.0]),
                                    context=torch.randn(1, 77, 1024))
    assert torch.isfinite(out).all() and out.std() > 0


def test_sdxl_model_has_adm(tiny_sdxl_model):
    model = tiny_sdxl_model.model
    assert model.adm_channels == 2816
    assert model.model_config.unet_config["context_dim"] == 2048
    with torch.inference_mode():
        out = model.diffusion_model(torch.randn(1, 4, 16, 16), torch.tensor([10.0]),
                                    context=torch.randn(1, 77, 2048), y=torch.randn(1, 2816))
    assert torch.isfinite(out).all() and out.std() > 0


def _with_lora(prompt, lora_name):
    prompt = dict(prompt)
    prompt["10"] = {"class_type": "LoraLoader",
                    "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": lora_name,
                               "strength_model": 1.0, "strength_clip": 0.0}}
    prompt["3"] = {**prompt["3"], "inputs": {**prompt["3"]["inputs"], "model": ["10", 0]}}
    return prompt


def test_lora_changes_unet_output(run_graph, tiny_sd15_ckpt, tiny_lora):
    # strength_clip=0: any change in the image comes from the UNet patch
    base = run_graph(txt2img(tiny_sd15_ckpt.name, seed=3)).raise_for_error().images[0]
    lora = run_graph(_with_lora(txt2img(tiny_sd15_ckpt.name, seed=3), tiny_lora.name)).raise_for_error()
    _assert_image_ok(lora.images[0])
    assert np.abs(lora.images[0].astype(int) - base.astype(int)).mean() > 1.0


def test_controlnet_loads_and_changes_output(run_graph, tiny_sd15_ckpt, tiny_controlnet):
    base = run_graph(txt2img(tiny_sd15_ckpt.name, seed=4)).raise_for_error().images[0]
    prompt = txt2img(tiny_sd15_ckpt.name, seed=4)
    prompt.update({
        "20": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": tiny_controlnet.name}},
        "21": {"class_type": "EmptyImage",
               "inputs": {"width": 128, "height": 128, "batch_size": 1, "color": 0x8040C0}},
        "22": {"class_type": "ControlNetApply",
               "inputs": {"conditioning": ["6", 0], "control_net": ["20", 0], "image": ["21", 0],
                          "strength": 1.0}},
    })
    prompt["3"]["inputs"]["positive"] = ["22", 0]
    result = run_graph(prompt).raise_for_error()
    _assert_image_ok(result.images[0])
    assert np.abs(result.images[0].astype(int) - base.astype(int)).mean() > 1.0


@pytest.mark.parametrize("kind", ["sd2v", "sdxl"])
def test_tiny_models_are_seeded(comfy_host, kind):
    from harness.tiny_models import build_model_patcher
    a = build_model_patcher(kind).model.diffusion_model.state_dict()
    b = build_model_patcher(kind).model.diffusion_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
