"""Fixtures for MagicFace-in-ComfyUI tests: the tiny checkpoint loaded once, tensors under inference mode."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _inference_mode():
    # ComfyUI runs every node under inference mode; node calls made directly by tests must too.
    with torch.inference_mode():
        yield


@pytest.fixture(scope="session")
def tiny(comfy_host, tiny_sd15_ckpt):
    """(model, clip, vae) of the tiny SD1.5 checkpoint, loaded with ComfyUI's own loader."""
    from .mf import load_checkpoint
    with torch.inference_mode():
        return load_checkpoint(tiny_sd15_ckpt)


@pytest.fixture(scope="session")
def negative(tiny):
    from .mf import encode
    with torch.inference_mode():
        return encode(tiny[1], "blurry")
