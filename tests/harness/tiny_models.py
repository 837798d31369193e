"""Random, tiny-but-real-shaped Stable Diffusion models built at test time.

Nothing here is committed: every file is generated from a seeded generator
into a directory the caller owns.  Module layouts come from the running
ComfyUI host (built on the meta device, so no memory is spent), which keeps
the key names right for whichever host is under test.

Every parameter is set explicitly: ComfyUI's layers skip weight init, so an
untouched tensor would be garbage (NaN).  Weights get normal(0, 1/sqrt(fan_in))
(~0.02 for the 320-channel convs; scaled so activations neither vanish nor
explode through the stack), biases zeros, norm weights ones.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

GENERATOR_VERSION = 2

# SD1.5 detection keys on model_channels=320, context_dim=768 and conv
# (not linear) proj_in; we keep those and cut depth and width growth
# (channel_mult 1,1,1: the 1280-channel levels of the real model would make
# one call ~3x slower and the file ~2 GB).  Attention at latent/1, /2, /4 and
# in the middle block, so self- and cross-attention exist at full and
# reduced resolutions.
SD15_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320,
    num_res_blocks=[1, 1, 1], channel_mult=[1, 1, 1],
    transformer_depth=[1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1],
    transformer_depth_middle=1, context_dim=768, num_heads=8, num_head_channels=-1,
    use_linear_in_transformer=False, adm_in_channels=None, use_spatial_transformer=True,
    legacy=False, use_checkpoint=False, use_temporal_resblock=False,
    use_temporal_attention=False,
)
# SD2.x layout: 1024 context, linear proj_in, 64-channel heads.
SD2_UNET = dict(SD15_UNET, context_dim=1024, use_linear_in_transformer=True,
                num_heads=-1, num_head_channels=64)
# SDXL layout: 2048 context, `y` (adm) vector of 2816 = pooled 1280 + 6*256 size
# embeddings; no attention at full resolution, like the real model.
SDXL_UNET = dict(SD2_UNET, context_dim=2048, adm_in_channels=2816, num_classes="sequential",
                 channel_mult=[1, 1], num_res_blocks=[1, 1], transformer_depth=[0, 1],
                 transformer_depth_output=[0, 0, 1, 1])
# SDXL's depth pattern in small: a third level whose blocks hold two transformers each, so the
# segmentation (read below the finest attention level) has blocks more than one transformer deep.
SDXL_DEEP_UNET = dict(SDXL_UNET, channel_mult=[1, 1, 1], num_res_blocks=[1, 1, 1], transformer_depth=[0, 1, 2],
                      transformer_depth_output=[0, 0, 1, 1, 2, 2], transformer_depth_middle=2)
# SDXL refiner layout: 1280 context (OpenCLIP-G only), `y` of 2560 = pooled 1280 + 5*256
# (sizes and aesthetic score), 384 model channels.
SDXL_REFINER_UNET = dict(SDXL_UNET, context_dim=1280, adm_in_channels=2560, model_channels=384)

CLIP_L = dict(width=768, layers=12, heads=12, vocab=49408, positions=77, mlp=3072)


def _init_tensor(shape, kind: str, gen: torch.Generator, gain: float = 1.0) -> torch.Tensor:
    if kind == "ones":
        return torch.ones(shape)
    if kind == "zeros" or len(shape) < 2:
        return torch.zeros(shape)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=gen) * (gain / math.sqrt(fan_in))


def random_state_dict(module: torch.nn.Module, seed: int, gain: float = 1.0) -> dict:
    """Explicitly initialised state dict for a (meta-device) module."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for mod_name, mod in module.named_modules():
        is_norm = isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm))
        for p_name, p in mod.named_parameters(recurse=False):
            if is_norm:
                kind = "ones" if p_name == "weight" else "zeros"
            elif p_name == "vae_scale":
                kind = "ones"
            else:
                kind = "normal" if p.dim() >= 2 else "zeros"
            key = f"{mod_name}.{p_name}" if mod_name else p_name
            out[key] = _init_tensor(tuple(p.shape), kind, gen, gain)
    return out


def _meta(factory):
    with torch.device("meta"):
        return factory()


def _unet_module(config: dict):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return _meta(lambda: UNetModel(**config, operations=comfy.ops.disable_weight_init))


def clip_l_state_dict(seed: int, prefix: str) -> dict:
    """A full-size random CLIP-L text encoder in transformers' key layout."""
    c, gen = CLIP_L, torch.Generator().manual_seed(seed)
    w, t = c["width"], f"{prefix}text_model."
    sd = {f"{t}embeddings.token_embedding.weight": torch.randn(c["vocab"], w, generator=gen) * 0.02,
          f"{t}embeddings.position_embedding.weight": torch.randn(c["positions"], w, generator=gen) * 0.01,
          f"{t}final_layer_norm.weight": torch.ones(w), f"{t}final_layer_norm.bias": torch.zeros(w)}
    linears = {"self_attn.q_proj": (w, w), "self_attn.k_proj": (w, w), "self_attn.v_proj": (w, w),
               "self_attn.out_proj": (w, w), "mlp.fc1": (c["mlp"], w), "mlp.fc2": (w, c["mlp"])}
    for i in range(c["layers"]):
        layer = f"{t}encoder.layers.{i}."
        for name, shape in linears.items():
            sd[f"{layer}{name}.weight"] = _init_tensor(shape, "normal", gen)
            sd[f"{layer}{name}.bias"] = torch.zeros(shape[0])
        for ln in ("layer_norm1", "layer_norm2"):
            sd[f"{layer}{ln}.weight"], sd[f"{layer}{ln}.bias"] = torch.ones(w), torch.zeros(w)
    return sd


def taesd_state_dict(seed: int) -> dict:
    """Random TAESD weights; ComfyUI picks TAESD when it sees taesd_decoder.* keys.

    Its ReLU stack gives every output channel a large random offset that would
    saturate all pixels, so the output conv is re-scaled from one calibration
    pass (data-dependent init): decoded pixels come out ~0.5 +- 0.2.
    """
    import comfy.taesd.taesd as taesd
    model = taesd.TAESD()  # small (2.4M params): real tensors are fine here
    sd = random_state_dict(model, seed)
    model.load_state_dict(sd)
    out_w = [k for k, v in sd.items() if k.startswith("taesd_decoder.") and v.dim() == 4 and v.shape[0] == 3][-1]
    out_b = out_w[:-len("weight")] + "bias"
    latent = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed)) * 20
    with torch.no_grad():
        raw = model.taesd_decoder(latent)
    mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3))
    sd[out_w] = sd[out_w] * (0.2 / std)[:, None, None, None]
    sd[out_b] = 0.5 - mean * (0.2 / std)
    return sd


def _save(sd: dict, path: Path) -> Path:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    tmp.replace(path)  # atomic: a crashed run never leaves a half file
    return path


def write_sd15_checkpoint(path: Path, seed: int = 0) -> Path:
    """Single-file SD1.5-class checkpoint: tiny UNet + CLIP-L + TAESD."""
    sd = {f"model.diffusion_model.{k}": v
          for k, v in random_state_dict(_unet_module(SD15_UNET), seed).items()}
    sd.update(clip_l_state_dict(seed + 1, "cond_stage_model.transformer."))
    sd.update({f"first_stage_model.{k}": v for k, v in taesd_state_dict(seed + 2).items()})
    return _save(sd, path)


def write_controlnet(path: Path, seed: int = 10) -> Path:
    """ControlNet matching the SD1.5 tiny layout (random, not zero, zero-convs
    so it visibly changes the UNet output)."""
    import comfy.cldm.cldm
    import comfy.ops
    cfg = {k: v for k, v in SD15_UNET.items() if k != "out_channels"}
    net = _meta(lambda: comfy.cldm.cldm.ControlNet(**cfg, hint_channels=3,
                                                   operations=comfy.ops.disable_weight_init))
    return _save(random_state_dict(net, seed), path)


def write_lora(path: Path, rank: int = 4, seed: int = 20) -> Path:
    """Kohya-format LoRA touching every attn1/attn2 projection of the SD1.5 UNet."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, param in _unet_module(SD15_UNET).named_parameters():
        if ".attn" not in key or not key.endswith(".weight") or param.dim() != 2:
            continue
        name = "lora_unet_" + key[:-len(".weight")].replace(".", "_")
        out_dim, in_dim = param.shape
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, in_dim, generator=gen) / math.sqrt(in_dim)
        sd[f"{name}.lora_up.weight"] = torch.randn(out_dim, rank, generator=gen) / math.sqrt(rank)
        sd[f"{name}.alpha"] = torch.tensor(float(rank))
    return _save(sd, path)


def _tiny_config(kind: str):
    """(model config, model type, model class, or None where the config picks its own) of a kind."""
    import comfy.model_base as base
    import comfy.supported_models as supported
    eps = base.ModelType.EPS
    kinds = {
        "sd2v": (lambda: supported.SD20(dict(SD2_UNET)), base.ModelType.V_PREDICTION, base.BaseModel),
        "sdxl": (lambda: supported.SDXL(dict(SDXL_UNET)), eps, base.SDXL),
        "sdxl_deep": (lambda: supported.SDXL(dict(SDXL_DEEP_UNET)), eps, base.SDXL),
        "sdxl_refiner": (lambda: supported.SDXLRefiner(dict(SDXL_REFINER_UNET)), eps, None),
        "sd15inpaint": (lambda: supported.SD15(dict(SD15_UNET, in_channels=9)), eps, None),
    }
    if kind not in kinds:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    make_config, model_type, model_class = kinds[kind]
    return make_config(), model_type, model_class


def build_model_patcher(kind: str, seed: int = 30):
    """A ModelPatcher-wrapped tiny UNet of class ``"sd2v"``, ``"sdxl"``, ``"sdxl_deep"``,
    ``"sdxl_refiner"`` or ``"sd15inpaint"``.

    Built from ComfyUI's model classes directly (no checkpoint): SD2.x with
    v-prediction, SDXL (base or refiner) with adm (`y`) conditioning, or an SD1.5 inpainting UNet
    (9 input channels: latent, mask, masked-image latent), which the host's
    model config marks as an inpainting model from its channel count.
    """
    import comfy.model_management
    import comfy.model_patcher
    config, model_type, model_class = _tiny_config(kind)
    config.set_inference_dtype(torch.float32, None)
    if model_class is None:  # the config's own choice: it sets the inpainting inputs up
        model = config.get_model({}, device=torch.device("cpu"))
    else:
        model = model_class(config, model_type=model_type, device=torch.device("cpu"))
    weights = random_state_dict(_unet_module(config.unet_config), seed)
    missing, unexpected = model.diffusion_model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"tiny {kind} layout mismatch: missing={missing} unexpected={unexpected}")
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def write_all(models_dir: Path) -> dict:
    """Write checkpoint, ControlNet and LoRA under ComfyUI's folder layout.

    Returns ``{"checkpoint"|"controlnet"|"lora": Path}``; file names carry the
    generator version so a stale cache is never mistaken for a fresh one.
    """
    v = GENERATOR_VERSION
    files = {"checkpoint": models_dir / "checkpoints" / f"tiny_sd15_v{v}.safetensors",
             "controlnet": models_dir / "controlnet" / f"tiny_sd15_controlnet_v{v}.safetensors",
             "lora": models_dir / "loras" / f"tiny_sd15_lora_v{v}.safetensors"}
    writers = {"checkpoint": write_sd15_checkpoint, "controlnet": write_controlnet, "lora": write_lora}
    for name, path in files.items():
        if not path.is_file():
            writers[name](path)
    return files
