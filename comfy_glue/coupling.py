"""Batch coupling: the references' rows ride in the target's own model call.

Where the GPU waits on kernel launches (SD1.5 on a fast card), one UNet call on 2+R rows
costs little more than a 2-row call, while a separate R-row pass costs a whole second call;
docs/performance.md has the measurements. Coupling is used whenever nothing else could see the extra rows; otherwise
the separate pass runs (reference_pass.py), so other nodes' patches never meet reference rows:
- another model_function_wrapper, or any attention/block patch that is not MagicFace's own (callbacks
  that IPAdapter-style nodes added to its hooks count as another node's);
- conditioning inputs other than text context, adm ('y'), extra input channels ('c_concat' of
  inpainting checkpoints, the references' own from the plan) and ControlNet residuals;
- a frame the references do not fit in (aligned to 8 latent pixels) or fill less than half
  of; a larger frame, e.g. a 512x768 image with 512x512 references, gets them letterboxed: the
  border filled with wrapped copies of them (see ReferenceInputs.noisy_in_frame) and masked
  out of their keys;
- a text context whose length is not a multiple of the references' (77 tokens per chunk).
ControlNet residuals are padded with zero rows: references get no control, as in the
separate pass. The reference context is repeated to the target's length; attention over a
context repeated n times equals attention over the context once.
"""
import torch

from .attention_hooks import CrossAttentionHook, SelfAttentionHook
from .reference_pass import letterbox

COUPLABLE_CONDS = frozenset({"c_crossattn", "y", "c_concat", "control", "transformer_options"})


def _only_own_patches(options: dict) -> bool:
    if any(options.get("patches", {}).values()):
        return False
    for replaces in options.get("patches_replace", {}).values():
        for hook in replaces.values():
            if not isinstance(hook, (SelfAttentionHook, CrossAttentionHook)) or hook.previous is not None:
                return False
            if getattr(hook, "added", None):  # another node's callbacks (IPAdapter) would see the rows
                return False
    return True


def _control_rows_match(control, rows: int) -> bool:
    if control is None:
        return True
    if not isinstance(control, dict):
        return False
    return all(isinstance(residuals, list) and all(r is None or (torch.is_tensor(r) and r.shape[0] == rows)
                                                   for r in residuals) for residuals in control.values())


def can_couple(x, c: dict, refs, has_foreign_wrapper: bool):
    """The references' Letterbox in this call's frame when they may join its batch (see the
    module docstring), else None."""
    if has_foreign_wrapper or not set(c) <= COUPLABLE_CONDS:
        return None
    if not _only_own_patches(c.get("transformer_options", {})):
        return None
    box = letterbox(refs.latent_hw, x.shape[-2:])
    if box is None or x.shape[1] != refs.latents.shape[1]:
        return None
    context = c.get("c_crossattn")
    if context is None or context.shape[-1] != refs.context.shape[-1] or context.shape[1] % refs.context.shape[1]:
        return None
    for name, own in (("y", refs.adm), ("c_concat", refs.concat)):
        if (name in c) != (own is not None) or (name in c and c[name].shape[1] != own.shape[1]):
            return None
    return box if _control_rows_match(c.get("control"), x.shape[0]) else None


def _append_zero_rows(tensor, count: int):
    return torch.cat([tensor, tensor.new_zeros((count,) + tuple(tensor.shape[1:]))])


def coupled_inputs(x, timestep, c: dict, refs, sigma_value: float, box):
    """(x, timestep, c) of the target with the references' rows appended after its own."""
    noisy, sigma = refs.noisy_in_frame(sigma_value, box)
    count = refs.count
    context = c["c_crossattn"]
    repeats = context.shape[1] // refs.context.shape[1]
    coupled = dict(c)
    coupled["c_crossattn"] = torch.cat([context, refs.context.to(context.dtype).repeat(1, repeats, 1)])
    if "y" in c:
        coupled["y"] = torch.cat([c["y"], refs.adm.to(c["y"].dtype)])
    if "c_concat" in c:
        coupled["c_concat"] = torch.cat([c["c_concat"], refs.in_frame(refs.concat, box).to(c["c_concat"].dtype)])
    if c.get("control") is not None:
        coupled["control"] = {name: [None if r is None else _append_zero_rows(r, count) for r in residuals]
                              for name, residuals in c["control"].items()}
    timestep = torch.cat([timestep, sigma.to(timestep.dtype)])
    options = dict(c.get("transformer_options", {}))
    options["sigmas"] = timestep
    coupled["transformer_options"] = options
    return torch.cat([x, noisy.to(x.dtype)]), timestep, coupled
