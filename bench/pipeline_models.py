"""Random-weight UNets, conditioning and MagicFace plans for bench_pipeline.py.

The full-size configs are SD1.5's and SDXL's true UNet layouts (channels, levels, depths, heads),
so one model call costs what the real model's does; weights are random because only the cost is
measured. The tiny configs keep each family's layout pattern (where attention sits, which
decoder levels MagicFace patches) at a fraction of the width, for CPU smoke runs.
"""
import importlib
import math
from dataclasses import dataclass

import torch

# Every benchmarked run samples with these (bench_pipeline times them, bench_arithmetic counts their steps).
SAMPLER, SCHEDULER = "euler", "normal"

_COMMON = dict(in_channels=4, out_channels=4, use_spatial_transformer=True, legacy=False, use_checkpoint=False,
               use_temporal_resblock=False, use_temporal_attention=False, image_size=32)
SD15_FULL = dict(_COMMON, model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 transformer_depth_middle=1, context_dim=768, num_heads=8, num_head_channels=-1,
                 use_linear_in_transformer=False, adm_in_channels=None)
SDXL_FULL = dict(_COMMON, model_channels=320, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2],
                 transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 transformer_depth_middle=10, context_dim=2048, num_heads=-1, num_head_channels=64,
                 use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential")
# transformer_depth_output is consumed from its end (ComfyUI pops it), lowest resolution first.
# Tiny: same level/attention pattern, 32 base channels, one res block per level, shallow SDXL stacks.
SD15_TINY = dict(SD15_FULL, model_channels=32, channel_mult=[1, 2, 2, 2], num_res_blocks=[1, 1, 1, 1],
                 transformer_depth=[1, 1, 1, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0])
SDXL_TINY = dict(SDXL_FULL, model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=[1, 1, 1],
                 transformer_depth=[0, 1, 2], transformer_depth_output=[0, 0, 1, 1, 2, 2], transformer_depth_middle=1,
                 num_head_channels=16)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    unet: dict
    family: str           # "sd15" or "sdxl"
    latent_hw: tuple      # latent grid of the benchmarked image
    pooled_dim: int = 0   # SDXL's pooled text embedding width (0: none)

    @property
    def image_size(self) -> str:
        return f"{self.latent_hw[1] * 8}x{self.latent_hw[0] * 8}"


SPECS = {
    ("sd15", False): ModelSpec("SD1.5", SD15_FULL, "sd15", (64, 64)),
    ("sdxl", False): ModelSpec("SDXL", SDXL_FULL, "sdxl", (128, 128), pooled_dim=1280),
    ("sd15", True): ModelSpec("SD1.5-tiny", SD15_TINY, "sd15", (16, 16)),
    ("sdxl", True): ModelSpec("SDXL-tiny", SDXL_TINY, "sdxl", (16, 16), pooled_dim=1280),
}


def pack_module(name: str):
    """A module of the pack as ComfyUI loaded it (the pack root is never on sys.path; hosts
    name the package differently, so it is found from a registered node class)."""
    import nodes
    package = nodes.NODE_CLASS_MAPPINGS["MagicFaceApply"].__module__.rsplit(".nodes.", 1)[0]
    return importlib.import_module(f"{package}.{name}")


def glue(module: str):
    return pack_module(f"comfy_glue.{module}")


def attention_core():
    """The pack's magicface_attn, the same module objects its glue uses."""
    return pack_module("magicface_attn")


@torch.no_grad()
def init_parameters(module: torch.nn.Module, seed: int):
    """Every parameter set explicitly (ComfyUI's layers skip init: untouched memory is garbage).

    Weights ~ N(0, 1/fan_in) keep activations in range through the deep stack; biases 0, norms 1.
    Drawn in float32 on the parameter's device, then cast.
    """
    generator = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for sub in module.modules():
        is_norm = isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm))
        for name, param in sub.named_parameters(recurse=False):
            if is_norm and name == "weight":
                param.fill_(1)
            elif param.dim() < 2:
                param.zero_()
            else:
                fan_in = math.prod(param.shape[1:])
                values = torch.randn(param.shape, generator=generator, device=param.device)
                param.copy_(values / math.sqrt(fan_in))


def build_base_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype):
    """The ComfyUI model (BaseModel / SDXL) of spec's layout on `device` in `dtype`, weights not
    set (the meta device has none to set)."""
    import comfy.model_base
    import comfy.supported_models
    if spec.family == "sdxl":
        config, model_class = comfy.supported_models.SDXL(dict(spec.unet)), comfy.model_base.SDXL
    else:
        config, model_class = comfy.supported_models.SD15(dict(spec.unet)), comfy.model_base.BaseModel
    config.set_inference_dtype(dtype, None)
    return model_class(config, model_type=comfy.model_base.ModelType.EPS, device=device)


def build_model_patcher(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A ComfyUI ModelPatcher around a random-weight UNet built directly on `device` in `dtype`."""
    import comfy.model_patcher
    model = build_base_model(spec, device, dtype)
    init_parameters(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def conditioning(spec: ModelSpec, seed: int):
    """Random (positive, negative) CONDITIONING with the family's context (and pooled) widths."""
    generator = torch.Generator().manual_seed(seed)
    context_dim = spec.unet["context_dim"]

    def one():
        extra = {}
        if spec.pooled_dim:
            extra["pooled_output"] = torch.randn(1, spec.pooled_dim, generator=generator)
        return [[torch.randn(1, 77, context_dim, generator=generator), extra]]

    return one(), one()


def concept_masks(concepts: int) -> torch.Tensor:
    """(R, 64, 64) float masks: overlapping but distinct central rectangles, as face, hair and
    hat masks are (they cover 47, 37, 27 and 19 % of their references)."""
    masks = torch.zeros(concepts, 64, 64)
    for index in range(concepts):
        masks[index, 8 + 4 * index: 56, 12 + 4 * index: 52 - 2 * index] = 1
    return masks


def make_plan(model_patcher, spec: ModelSpec, concepts: int, seed: int = 0, semantic_cfg: bool = True,
              reference_every: int = 1, reference_size: int = 0, lean_segmentation: bool = False):
    """The MagicFacePlan MagicFace Apply would build (the pack's build_plan), without CLIP/VAE:
    random reference latents at the target's size (or reference_size pixels square) and
    contexts, a central rectangle per concept mask, 'paper' layers; the segmentation reads all
    its layers, or with lean_segmentation the first transformer of each block."""
    generator = torch.Generator().manual_seed(seed + 100)
    masks = concept_masks(concepts)
    pooled = torch.randn(concepts, spec.pooled_dim, generator=generator) if spec.pooled_dim else None
    reference_hw = (reference_size // 8,) * 2 if reference_size else spec.latent_hw
    references = glue("builder").ReferenceBatch(
        images=None, latents=torch.randn(concepts, 4, *reference_hw, generator=generator),
        context=torch.randn(concepts, 77, spec.unet["context_dim"], generator=generator), pooled=pooled,
        concat=None, size=masks.shape[-1])
    weights = [2.5] + [2.0] * (concepts - 1)
    bench_concepts = [glue("concepts").Concept(image=torch.zeros(1, 1, 3), mask=masks[i], words=f"concept{i}",
                                               weight=weights[i], reference_prompt="") for i in range(concepts)]
    schedule = glue("schedule").StageSchedule(semantic_cfg=semantic_cfg, reference_every=reference_every,
                                              segmentation_layers=lean_segmentation_set(lean_segmentation))
    tokens = [(2 + 3 * i,) for i in range(concepts)]
    return glue("builder").build_plan(model_patcher, bench_concepts, schedule, references, tokens, seed=seed)


def lean_segmentation_set(lean: bool) -> str:
    keys = glue("keys")
    return keys.SEGMENTATION_ONE_PER_BLOCK if lean else keys.SEGMENTATION_ALL_LAYERS


def patched_model(model_patcher, plan):
    """(clone of model_patcher with every MagicFace hook installed, its MagicFacePatch)."""
    patched = model_patcher.clone()
    patch = glue("patch").MagicFacePatch(plan)
    patch.install(patched)
    return patched, patch
