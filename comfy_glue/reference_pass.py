"""The references' rows: reference latents re-noised to the current sigma, through the same UNet.

Only the cond branch of the references is computed (the target never reads their uncond
branch), with plain attention and no ControlNet. Their keys/values at the injection layers
feed RSA/RBA. Two ways to run them (see coupling.py for the choice):
- batch coupling: appended to the target's own model call (one UNet call per step);
- a separate pass (this module's run_reference_pass) when other patches share the model: the
  features are captured by the SelfAttentionHooks, the UNet output is discarded, so the output
  blocks after the last injection layer run on one pixel row (see OutputBlockCut).
"""
from dataclasses import dataclass

import torch

from . import keys
from .host import noise_to_sigma, size_adm
from .call_context import CallContext
from .noise_levels import same_sigma

# Mixes the user's seed with the noise level so each step gets fresh but reproducible
# reference noise, independent of how often the sampler calls the model.
_SIGMA_SEED_SCALE = 1_000_000


def reference_noise(seed: int, sigma: float, shape):
    generator = torch.Generator(device="cpu")
    generator.manual_seed((seed * 1_000_003 + int(round(sigma * _SIGMA_SEED_SCALE))) % (2 ** 63))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


class PerLevelNoise:
    """reference_noise of the seed at every noise level (the default source)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, sigma: float, shape):
        return reference_noise(self.seed, sigma, shape)


class PublishedNoiseStream:
    """The published MagicFace script's reference noise, for one run.

    The script seeds torch's CPU generator, draws the target's initial latent, then draws one
    (R, C, h, w) tensor at each step for the references. ComfyUI's KSampler draws its initial
    noise from a CPU generator seeded with its own seed, so with the same seed in both nodes
    the first draw is the script's initial latent; this stream skips it and gives the k-th new
    noise level of the run the k-th draw after it (the same draw for repeated calls at one level).

    target_shape: (B, C, H, W) of the sampler's latent batch.
    """

    def __init__(self, seed: int, target_shape):
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        torch.randn(tuple(target_shape), generator=self.generator, dtype=torch.float32)
        self.last = None  # (sigma, noise) of the newest level

    def __call__(self, sigma: float, shape):
        if self.last is None or not same_sigma(self.last[0], sigma):
            self.last = (sigma, torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32))
        return self.last[1]


def noise_source(plan, target_shape):
    if plan.reference_noise == keys.REFERENCE_NOISE_PUBLISHED:
        return PublishedNoiseStream(plan.seed, target_shape)
    return PerLevelNoise(plan.seed)


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


# Latent strides of the UNet levels (at most 8): offsets that are multiples of this keep the
# references' window aligned with every layer grid.
_LETTERBOX_ALIGN = 8
# Letterbox only references that fill at least 1/this of the frame's area (see letterbox()).
_MIN_LETTERBOX_FILL_INVERSE = 2


@dataclass(frozen=True)
class Letterbox:
    """Where the references' latent grid sits inside the target's frame, in latent pixels."""
    frame_hw: tuple
    ref_hw: tuple
    top: int
    left: int

    def window(self, factor: int):
        """(top, left, h, w) of the references at the layer grid of stride `factor`."""
        return self.top // factor, self.left // factor, self.ref_hw[0] // factor, self.ref_hw[1] // factor


def letterbox(ref_hw, frame_hw):
    """The references centred (aligned down to 8) in a frame at least as large, or None.

    None too when they would fill less than half of it: letterboxed rows cost a whole frame
    each, while their own pass costs their own size, which wins where the UNet is bound by
    arithmetic (large frames, CPUs), and the letterbox is an approximation besides.
    """
    (h, w), (height, width) = tuple(ref_hw), tuple(frame_hw)
    if height < h or width < w or any(n % _LETTERBOX_ALIGN for n in (h, w, height, width)):
        return None
    if h * w * _MIN_LETTERBOX_FILL_INVERSE < height * width:
        return None
    align = lambda extra: extra // 2 // _LETTERBOX_ALIGN * _LETTERBOX_ALIGN  # noqa: E731
    return Letterbox((height, width), (h, w), align(height - h), align(width - w))


class ReferenceInputs:
    """The references' model inputs for one run and device, moved there once.

    latents: (R, C_lat, h, w) float32 clean latents; context: (R, T_ref, C_ctx) in the target
    context's dtype; adm: (R, C_adm) 'y' vector on models that take one (SDXL), else None;
    concat: (R, C_extra, h, w) float32 extra input channels (c_concat) on models that take them,
    else None. target_shape: (B, C, H, W) of the sampler's latent batch (see noise_source).
    """

    def __init__(self, plan, base_model, target_c, device, target_shape):
        self.noise = noise_source(plan, target_shape)
        self.latents = plan.reference_latents.to(device, torch.float32)
        self.count = self.latents.shape[0]
        self.latent_hw = tuple(self.latents.shape[-2:])
        self.context = plan.reference_context.to(device, target_c["c_crossattn"].dtype)
        self.adm = _reference_adm(base_model, plan, target_c, self.latent_hw, device)
        self.concat = None if plan.reference_concat is None else plan.reference_concat.to(device, torch.float32)
        self.model_sampling = base_model.model_sampling
        self._wrap_box, self._wrap = None, None

    def noisy(self, sigma_value: float):
        """(noisy latents (R, C_lat, h, w) float32, sigma (R,) float32) at noise level sigma_value."""
        device = self.latents.device
        sigma = torch.full((self.count,), sigma_value, device=device, dtype=torch.float32)
        noise = self.noise(sigma_value, self.latents.shape).to(device)
        return noise_to_sigma(self.model_sampling, sigma, noise, self.latents), sigma

    def noisy_in_frame(self, sigma_value: float, box: Letterbox):
        """noisy() placed in the target's frame, the border filled with wrapped copies of it.

        The border's keys are masked out, but the references' own group norms, convolutions and
        self-attention still see it. Copies of the reference keep those closer to a pass at the
        reference's own size than a zero border does (docs/compatibility.md has the figures,
        tests/integration/test_reference_rows.py the bound).
        """
        noisy, sigma = self.noisy(sigma_value)
        return self.in_frame(noisy, box), sigma

    def in_frame(self, grids, box: Letterbox):
        """(R, C, h, w) reference grids (noisy latents, concat channels) placed in the frame."""
        if box.frame_hw == box.ref_hw:
            return grids
        rows, columns = self._wrap_indices(box)
        return grids[:, :, rows[:, None], columns[None, :]]

    def _wrap_indices(self, box: Letterbox):
        """Source row and column of every frame pixel: (frame h,), (frame w,) long, on the device."""
        if self._wrap_box != box:
            device = self.latents.device
            (height, width), (h, w) = box.frame_hw, box.ref_hw
            self._wrap = ((torch.arange(height, device=device) - box.top) % h,
                          (torch.arange(width, device=device) - box.left) % w)
            self._wrap_box = box
        return self._wrap


def _reference_adm(base_model, plan, target_c, latent_hw, device):
    """adm ('y') vector for the references on models that need one (SDXL)."""
    if "y" not in target_c or plan.reference_pooled is None:
        return None
    adm = size_adm(base_model, plan.reference_pooled.to(device), latent_hw)
    return None if adm is None else adm.to(device, target_c["y"].dtype)


def run_reference_pass(run, hooks, apply_model, target_c, refs: ReferenceInputs, sigma_value: float):
    """Separate pass: fill run.references for one noise level (exact mode drops them after the call)."""
    noisy, sigma = refs.noisy(sigma_value)
    call = CallContext(run=run, mode=keys.MODE_CAPTURE, sigma=sigma_value, latent_hw=refs.latent_hw)
    target_options = target_c.get("transformer_options", {})
    options = {k: v for k, v in target_options.items()
               if k not in ("patches", "patches_replace", keys.CALL_CONTEXT_KEY, "cond_or_uncond", "sigmas")}
    options.update({
        "cond_or_uncond": [keys.COND_FLAG],
        "sigmas": sigma,
        "patches_replace": {"attn1": dict(hooks)},
        "patches": {"output_block_patch": [OutputBlockCut(last_needed_output_block(run.plan))]},
        keys.CALL_CONTEXT_KEY: call,
    })
    extra = {} if refs.adm is None else {"y": refs.adm}
    if refs.concat is not None:
        extra["c_concat"] = refs.concat
    run.references.clear()
    with torch.no_grad():
        apply_model(noisy, sigma, c_crossattn=refs.context, transformer_options=options, **extra)
    call.release()
