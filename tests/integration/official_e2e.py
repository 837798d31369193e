"""Replays whole runs of the published MagicFace pipeline (../shared/testdata/official_e2e)
through the pack's own nodes, in reference mode, on the recorded UNet and text embeddings.

Layout of the vectors: their README. In short, for a run of R concepts:
- the UNet (ComfyUI ldm layout) and its config; the text encoder's outputs for every prompt;
- the reference latents z0 and the masks as the published loader made them;
- the target latent after each of the 50 DDIM steps, in the diffusers parametrisation
  x_ddim = sqrt(a_t) x0 + sqrt(1 - a_t) eps; ComfyUI samples x = x_ddim / sqrt(a_t).

What stands in for what the vectors do not hold:
- RecordedClip: ComfyUI's real SD2 tokenizer, and for the text encoder the recorded outputs,
  looked up by the token ids ComfyUI produces (a tokenizer difference fails the lookup);
- RecordedVae: the recorded z0 as the VAE's encoding (the run's random VAE is not recorded).
Everything else is the pack as a user runs it: Concept Loader, Stage Scheduler, MagicFace
Apply with reference_noise "published script", and ComfyUI's sampling code.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from harness import REPO_ROOT

from .mf import node

E2E_DIR = Path(os.environ.get("MAGICFACE_E2E_VECTORS",
                              Path(os.environ.get("MAGICFACE_SHARED", REPO_ROOT.parent / "shared"))
                              / "testdata" / "official_e2e"))
# The published code counts the SD2 UNet's 16 transformer blocks in this order.
OFFICIAL_BLOCKS = [("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8),
                   ("middle", 0)] + [("output", i) for i in range(3, 12)]


@dataclass
class OfficialRun:
    name: str
    meta: dict
    tensors: dict

    @property
    def is_magicface(self) -> bool:
        return self.meta["kind"] == "magicface"

    @property
    def concept_count(self) -> int:
        return int(self.meta.get("R", 0))


def manifest() -> dict:
    return json.loads((E2E_DIR / "manifest.json").read_text())


def load_run(name: str) -> OfficialRun:
    meta = json.loads((E2E_DIR / f"{name}.json").read_text())
    return OfficialRun(name, meta, load_file(str(E2E_DIR / f"{name}.safetensors")))


# --- the model --------------------------------------------------------------------------------
def recorded_unet():
    """ModelPatcher of the recorded UNet (float32, CPU, epsilon prediction, SD2 layout)."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    config_file = json.loads((E2E_DIR / "unet_config.json").read_text())
    config = comfy.supported_models.SD20(dict(config_file["unet_config"]))
    config.unet_config.update(config_file["unet_config"])  # the SD2 class presets 64-wide heads
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS,
                                       device=torch.device("cpu"))
    weights = {k: v.float() for k, v in load_file(str(E2E_DIR / "unet_ldm_fp16.safetensors")).items()}
    model.diffusion_model.load_state_dict(weights, strict=True)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def sd2_tokenizer():
    try:
        from comfy.text_encoders.sd2_clip import SD2Tokenizer
    except ImportError:  # the 2024 host
        from comfy.sd2_clip import SD2Tokenizer
    return SD2Tokenizer()


class RecordedClip:
    """A CLIP whose tokenizer is ComfyUI's SD2 tokenizer and whose encoder answers with the
    official encoder's recorded output for the same token ids."""

    def __init__(self, token_rows, embeddings):
        self.tokenizer = sd2_tokenizer()
        self.embeddings = {tuple(int(t) for t in ids): emb for ids, emb in zip(token_rows, embeddings)}

    def tokenize(self, text):
        return self.tokenizer.tokenize_with_weights(text)

    def encode_from_tokens(self, tokens, return_pooled=False):
        chunks = next(iter(tokens.values()))
        ids = tuple(int(t[0]) for t in chunks[0])
        if len(chunks) != 1 or ids not in self.embeddings:
            raise AssertionError(f"no recorded text embedding for token ids {ids[:12]}...: ComfyUI's tokenizer "
                                 "differs from the published one for this text")
        cond = self.embeddings[ids][None].clone()
        return (cond, None) if return_pooled else cond

    def word_at(self, ids_row, position: int) -> str:
        inner = getattr(self.tokenizer, self.tokenizer.clip)
        return inner.tokenizer.decode([int(ids_row[position])]).strip()


class RecordedVae:
    """A VAE whose encoding of the references is the recorded z0 (in the VAE's own scale, which
    the model's process_latent_in multiplies back)."""

    def __init__(self, z0, scale_factor: float, size: int):
        self.z0, self.scale_factor, self.size = z0, scale_factor, size

    def encode(self, pixels):
        expected = (self.z0.shape[0], self.size, self.size, 3)
        assert tuple(pixels.shape) == expected, f"references reach the VAE as {tuple(pixels.shape)}, not {expected}"
        return self.z0 / self.scale_factor


def clip_for(run: OfficialRun) -> RecordedClip:
    t, hidden = run.tensors, run.tensors["encoder_hidden_states"]
    rows = 1 + run.concept_count
    # rows of the context: [uncond x rows (the negative prompt), cond target, cond references]
    token_rows = [t["negative_token_ids"][0]] + list(t["token_ids"])
    return RecordedClip(token_rows, [hidden[0]] + list(hidden[rows:]))


# --- the run's settings as node inputs ---------------------------------------------------------
def fraction_between(timesteps, step: int) -> float:
    """A schedule fraction whose sigma lies between the sigmas of timesteps[step] and the next
    (ComfyUI maps fraction p to timestep (1 - p) * 999)."""
    if step <= 0:
        return 0.0
    if step >= len(timesteps):
        return 1.0
    middle = (timesteps[step - 1] + timesteps[step]) / 2
    return 1.0 - middle / 999.0


def custom_layers(layer_idx) -> str:
    return ", ".join(f"{OFFICIAL_BLOCKS[i][0]}_{OFFICIAL_BLOCKS[i][1]}" for i in layer_idx)


@dataclass
class Settings:
    """The run's MagicFace settings; tests move one to show the replay can fail."""
    weights: list
    switch_step: int           # first RBA step (the published inject_step + 1)
    layer_idx: list
    ca_scale: float
    overrides: dict = field(default_factory=dict)

    @classmethod
    def of(cls, run: OfficialRun) -> "Settings":
        m = run.meta
        return cls(list(m["mask_weights"]), int(m["inject_step"]) + 1, list(m["layer_idx"]), float(m["ca_scale"]))


def patched_model(run: OfficialRun, unet, settings: Settings):
    """(patched MODEL, positive, negative, MagicFacePatch) of a MagicFace run, through the nodes."""
    m, t = run.meta, run.tensors
    clip = clip_for(run)
    concepts = None
    image = torch.full((1, 128, 128, 3), 0.5)  # unused by RecordedVae; 128 keeps the mask unresized
    for i in range(run.concept_count):
        word = clip.word_at(t["token_ids"][0], m["ref_index"][i])
        mask = t["ref_masks"][i][None].float()
        concepts = node("MagicFaceConceptLoader").load(image, word, float(settings.weights[i]), mask=mask,
                                                       reference_prompt=m["ref_prompts"][i], previous=concepts)[0]
    timesteps = m["timesteps"]
    schedule = node("MagicFaceStageScheduler").schedule(
        switch_at=fraction_between(timesteps, settings.switch_step),
        start_at=fraction_between(timesteps, int(m["start_step"])),
        end_at=fraction_between(timesteps, int(m["end_step"])),
        layers="custom", custom_layers=custom_layers(settings.layer_idx), ca_scale=settings.ca_scale,
        semantic_cfg=True, mask_mode="reference")[0]
    z0 = t["z0"]
    vae = RecordedVae(z0, unet.model.latent_format.scale_factor, z0.shape[-1] * 8)
    model, positive, patch = node("MagicFaceApply").apply(
        unet, clip, vae, m["target_prompt"], concepts=concepts, schedule=schedule, seed=int(m["seed"]),
        reference_size=z0.shape[-1] * 8, reference_noise="published script")
    assert patch.plan.concept_tokens == tuple((i,) for i in m["ref_index"]), patch.plan.concept_tokens
    negative = [[t["encoder_hidden_states"][0][None].clone(), {}]]
    return model, positive, negative, patch


# --- sampling ------------------------------------------------------------------------------------
@dataclass
class Replay:
    """The replayed run, in the vectors' parametrisation: latents (S, 1, 4, h, w) x_ddim after
    each step, x0_last (1, 4, h, w), and the pack's label map per step (concept index, -1 none)."""
    latents: torch.Tensor
    x0_last: torch.Tensor
    labels: list


def sigmas_of(unet, timesteps) -> torch.Tensor:
    """ComfyUI's ddim_uniform sigmas of these timesteps (sigma at each, then 0)."""
    sampling = unet.model.model_sampling
    return torch.cat([sampling.sigmas[torch.tensor(timesteps)], sampling.sigmas.new_zeros(1)]).float()


def to_ddim(x, sigma):
    """ComfyUI's x = x0 + sigma eps -> diffusers' x_ddim = sqrt(a) x0 + sqrt(1 - a) eps."""
    return x / torch.sqrt(1 + sigma ** 2)


def from_ddim(x_ddim, sigma):
    return x_ddim * torch.sqrt(1 + sigma ** 2)


def _landed(before, denoised, sigmas, alphas_cumprod, full_run: bool):
    """x_ddim after each step, from the latent before it and its x0 prediction (an Euler step of
    ComfyUI's ddim sampler, which is DDIM with eta 0). The last step of a whole published run
    lands at alphas_cumprod[0], not at sigma 0."""
    sigma_0 = torch.sqrt((1 - alphas_cumprod[0]) / alphas_cumprod[0])
    after = []
    for i, (x, x0) in enumerate(zip(before, denoised)):
        target = sigma_0 if full_run and i == len(before) - 1 else sigmas[i + 1]
        after.append(to_ddim(x0 + target * (x - x0) / sigmas[i], target))
    return torch.stack(after)


def _labels(patch, steps):
    if patch is None:
        return []
    history = patch.report()["label_history"]
    assert len(history) == steps, f"{len(history)} segmentations for {steps} steps"
    return [labels[0] for _, labels in history]


def free_running(run: OfficialRun, model, positive, negative, patch, unet) -> Replay:
    """The whole run through ComfyUI's KSampler code: sampler ddim, scheduler ddim_uniform, the
    run's seed. ComfyUI's noise of that seed is the published z_T, but ComfyUI starts from
    sigma * noise at the first timestep where diffusers starts from z_T itself as x_ddim
    (sqrt(1 + sigma^2) * noise in ComfyUI's terms, 0.29 % more at t = 981): the noise handed to
    the sampler is scaled by that ratio, so the run starts where the published one does."""
    import comfy.sample
    m, t = run.meta, run.tensors
    latent = torch.zeros_like(t["z_T"])
    assert torch.equal(comfy.sample.prepare_noise(latent, int(m["seed"])), t["z_T"]), \
        "ComfyUI's noise of the seed is not the published z_T"
    sigma_first = sigmas_of(unet, m["timesteps"])[0]
    noise = from_ddim(t["z_T"], sigma_first) / sigma_first
    before, denoised = [], []

    def record(step, x0, x, total):
        before.append(x.clone())
        denoised.append(x0.clone())

    comfy.sample.sample(model, noise, int(m["steps"]), float(m["guidance_scale"]), "ddim", "ddim_uniform",
                        positive, negative, latent, callback=record, disable_pbar=True, seed=int(m["seed"]))
    latents = _landed(before, denoised, sigmas_of(unet, m["timesteps"]), t["alphas_cumprod"], True)
    return Replay(latents, denoised[-1], _labels(patch, len(denoised)))


def teacher_forced(run: OfficialRun, model, positive, negative, patch, unet, steps=None) -> Replay:
    """Each step from the official latent before it (the first from z_T): one-step errors. The
    sampler is ComfyUI's Euler step (what its ddim sampler runs) with the input replaced."""
    import comfy.sample
    import comfy.samplers
    m, t = run.meta, run.tensors
    steps = steps or int(m["steps"])
    sigmas = sigmas_of(unet, m["timesteps"])[: steps + 1]
    official = [t["z_T"]] + [t["latents"][i][None] for i in range(steps - 1)]
    before, denoised = [], []

    def sampler(model_k, x, sigmas_k, extra_args=None, callback=None, disable=None):
        for i in range(len(sigmas_k) - 1):
            x = from_ddim(official[i], sigmas_k[i]).to(x)
            x0 = model_k(x, sigmas_k[i] * x.new_ones([x.shape[0]]), **(extra_args or {}))
            before.append(x.clone())
            denoised.append(x0.clone())
            x = x + (x - x0) / sigmas_k[i] * (sigmas_k[i + 1] - sigmas_k[i])
        return x

    latent = torch.zeros_like(t["z_T"])
    comfy.sample.sample_custom(model, torch.zeros_like(latent), float(m["guidance_scale"]),
                               comfy.samplers.KSAMPLER(sampler), sigmas, positive, negative, latent,
                               disable_pbar=True, seed=int(m["seed"]))
    latents = _landed(before, denoised, sigmas, t["alphas_cumprod"], steps == int(m["steps"]))
    return Replay(latents, denoised[-1], _labels(patch, len(denoised)))


# --- comparison ------------------------------------------------------------------------------
def relative_l2(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def official_labels(run: OfficialRun, step: int) -> torch.Tensor:
    """(32, 32) long: the concept RBA gives each pixel after that step's segmentation, later
    concepts overwriting earlier ones as in the published code, -1 none."""
    concepts = run.tensors["seg_concepts"][step]
    labels = torch.full(concepts.shape[1:], -1, dtype=torch.long)
    for i in range(concepts.shape[0]):
        labels[concepts[i].bool()] = i
    return labels


def near_tie_pixels(run: OfficialRun, step: int) -> int:
    """Pixels of that step's official segmentation whose top-2 margin is below 1e-5."""
    stats = run.meta["segmentation_stats_per_step"][step]
    return int(stats["token_pixels_margin_below_1e-5"]) + int(stats["fore_pixels_margin_below_1e-5"])
