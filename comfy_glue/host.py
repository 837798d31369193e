"""The only module that touches ComfyUI internals other than the ModelPatcher API.

It hides the differences between the 2024 host (model_function_wrapper, attention
replace patches) and newer hosts (the wrapper/callback API of comfy.patcher_extension).
"""
import inspect

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management as model_management

try:
    import comfy.patcher_extension as patcher_extension
except ImportError:  # the 2024 host has no wrapper API
    patcher_extension = None


def host_attention(q, k, v, heads, extra_options):
    """Run the host's own attention kernel exactly as an unpatched CrossAttention would.

    Calling the same function with the same arguments keeps rows that MagicFace leaves
    alone bit-identical to an unpatched model.
    """
    attention = comfy_attention.optimized_attention
    kwargs = {}
    names = _named_parameters(attention)
    if "attn_precision" in names:
        kwargs["attn_precision"] = extra_options.get("attn_precision")
    if "transformer_options" in names:
        kwargs["transformer_options"] = extra_options
    return attention(q, k, v, heads, **kwargs)


def _named_parameters(fn) -> tuple:
    """Parameter names that fn (or the function it wraps) declares. Read from the code object:
    this runs in every patched layer, where inspect.signature would be a noticeable cost."""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if code is None:
        return ()
    return code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def has_outer_sample_wrapper(model_patcher) -> bool:
    return patcher_extension is not None and hasattr(model_patcher, "add_wrapper_with_key")


def add_outer_sample_wrapper(model_patcher, key, wrapper):
    model_patcher.add_wrapper_with_key(patcher_extension.WrappersMP.OUTER_SAMPLE, key, wrapper)


def add_clone_callback(model_patcher, key, callback) -> bool:
    """Calls callback(parent, clone) at every clone of model_patcher (and of its clones), where
    the host offers clone callbacks. Returns False on hosts without them."""
    if patcher_extension is None or not hasattr(model_patcher, "add_callback_with_key"):
        return False
    model_patcher.add_callback_with_key(patcher_extension.CallbacksMP.ON_CLONE, key, callback)
    return True


def noise_to_sigma(model_sampling, sigma, noise, latent):
    """Forward-diffuse a clean latent to noise level sigma with the model's own rule."""
    return model_sampling.noise_scaling(sigma.reshape(-1, 1, 1, 1), noise, latent)


def get_attention_replace(model_patcher, which, key):
    replaces = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {})
    return replaces.get(which, {}).get(key)


# The latent of a black image that the 2024 host gives an inpainting UNet as its masked image
# when nothing is known (newer hosts build it in BaseModel.blank_inpaint_image_like).
_BLACK_IMAGE_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def nothing_known_concat(base_model, latents):
    """The extra input channels (c_concat) that a UNet with more input than latent channels
    takes, as the host builds them when no part of the image is given (text-to-image on an
    inpainting checkpoint: mask all ones, masked image black).

    latents: (R, C_lat, h, w) in the model's latent space. Returns (R, C_extra, h, w), or None
    where the host has no rule for this model's extra channels.
    """
    concat_cond = getattr(base_model, "concat_cond", None)
    if concat_cond is not None:  # hosts from 2024-08 on: every concat scheme they know
        return concat_cond(noise=latents, latent_image=latents, denoise_mask=None, device=latents.device)
    if getattr(base_model, "inpaint_model", False):  # the 2024 host: mask, then masked image
        black = torch.tensor(_BLACK_IMAGE_LATENT, dtype=latents.dtype).reshape(1, -1, 1, 1)
        return torch.cat([torch.ones_like(latents[:, :1]), black.expand_as(latents)], dim=1)
    return None


def unet_input_channels(base_model, default: int) -> int:
    return base_model.model_config.unet_config.get("in_channels", default)


def run_unet_once(model_patcher, x, sigma, context, transformer_options, **conditioning):
    """One UNet call outside sampling, on the host's device with the patcher's weight patches
    (LoRAs) applied; its attention/block patches are not used, only transformer_options.

    x: (B, C, h, w) noisy latents in the sampler's scale; sigma: (B,) noise levels; context:
    (B, T, C_ctx); conditioning: more model inputs (y, c_concat). Returns the model output on
    the host's device. Checked on the 2024-03 host and ComfyUI 0.3.64 and 0.33.0.
    """
    model_management.load_models_gpu([model_patcher])
    device = model_patcher.load_device
    moved = {name: value.to(device) for name, value in conditioning.items() if value is not None}
    with torch.no_grad():
        return model_patcher.model.apply_model(x.to(device), sigma.to(device), c_crossattn=context.to(device),
                                               transformer_options=transformer_options, **moved)


def size_adm(base_model, pooled, latent_hw):
    """The 'y' vector of models that take one (SDXL: pooled text + size embedding) for
    uncropped pictures of latent_hw, or None on models without one. pooled: (B, C_pool)."""
    if pooled is None or not getattr(base_model, "adm_channels", 0):
        return None
    height, width = latent_hw[0] * 8, latent_hw[1] * 8
    return base_model.encode_adm(pooled_output=pooled, width=width, height=height, crop_w=0, crop_h=0,
                                 target_width=width, target_height=height)
