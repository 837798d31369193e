"""The reference pass: reference latents re-noised to the current sigma, through the same UNet.

Only the cond branch of the references is computed (the target never reads their uncond
branch), with plain attention and no ControlNet. Their keys/values at the injection layers
are captured by the SelfAttentionHooks; the UNet output itself is discarded, so the output
blocks after the last injection layer run on one pixel row (see OutputBlockCut).
"""
import torch

from . import keys
from .host import noise_to_sigma
from .run_state import CallContext

# Mixes the user's seed with the noise level so each step gets fresh but reproducible
# reference noise, independent of how often the sampler calls the model.
_SIGMA_SEED_SCALE = 1_000_000


def reference_noise(seed: int, sigma: float, shape):
    generator = torch.Generator(device="cpu")
    generator.manual_seed((seed * 1_000_003 + int(round(sigma * _SIGMA_SEED_SCALE))) % (2 ** 63))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


class OutputBlockCut:
    """output_block_patch of the reference pass: nothing after the last output block that holds
    an injection layer is read, so from the next block on the decoder runs on its first pixel
    row only. A row, not one pixel: GroupNorm refuses a single value per group (narrow UNets,
    batch 1), and the discarded output must still broadcast against the input latent.

    An exception-free early exit: the remaining blocks cost a few tiny ops instead of full
    convolutions at the finest resolutions (SDXL's 'paper' layers end at output block 5 of 9).
    """

    def __init__(self, last_needed_block: int):
        self.last_needed_block = last_needed_block

    def __call__(self, h, skip, transformer_options):
        if transformer_options.get("block", ("output", 0))[1] > self.last_needed_block:
            return h[..., :1, :], skip[..., :1, :]
        return h, skip


def last_needed_output_block(plan) -> int:
    """Index of the last output block with an injection layer; -1 when none is in the decoder."""
    return max((layer.key[1] for layer in plan.injection_layers if layer.key[0] == "output"), default=-1)


def _reference_adm(base_model, plan, target_c, latent_hw, device):
    """adm ('y') vector for the references on models that need one (SDXL)."""
    if "y" not in target_c or plan.reference_pooled is None:
        return None
    height, width = latent_hw[0] * 8, latent_hw[1] * 8
    adm = base_model.encode_adm(pooled_output=plan.reference_pooled.to(device), width=width, height=height,
                                crop_w=0, crop_h=0, target_width=width, target_height=height)
    return None if adm is None else adm.to(device, target_c["y"].dtype)


def run_reference_pass(run, hooks, apply_model, target_c, sigma_value: float, device):
    """Fill run.reference_kv for noise level sigma_value (the run drops it after the call)."""
    plan = run.plan
    base_model = apply_model.__self__
    latents = plan.reference_latents.to(device, torch.float32)
    count, latent_hw = latents.shape[0], tuple(latents.shape[-2:])
    sigma = torch.full((count,), sigma_value, device=device, dtype=torch.float32)
    noise = reference_noise(plan.seed, sigma_value, latents.shape).to(device)
    noisy = noise_to_sigma(base_model.model_sampling, sigma, noise, latents)

    call = CallContext(run=run, mode=keys.MODE_CAPTURE, sigma=sigma_value, latent_hw=latent_hw)
    target_options = target_c.get("transformer_options", {})
    options = {k: v for k, v in target_options.items()
               if k not in ("patches", "patches_replace", keys.CALL_CONTEXT_KEY, "cond_or_uncond", "sigmas")}
    options.update({
        "cond_or_uncond": [keys.COND_FLAG],
        "sigmas": sigma,
        "patches_replace": {"attn1": dict(hooks)},
        "patches": {"output_block_patch": [OutputBlockCut(last_needed_output_block(plan))]},
        keys.CALL_CONTEXT_KEY: call,
    })
    context = plan.reference_context.to(device, target_c["c_crossattn"].dtype)
    extra = {}
    adm = _reference_adm(base_model, plan, target_c, latent_hw, device)
    if adm is not None:
        extra["y"] = adm
    run.reference_kv.clear()
    with torch.no_grad():
        apply_model(noisy, sigma, c_crossattn=context, transformer_options=options, **extra)
    call.release()
