"""Register magicface_attn from its file path, so test modules can `import magicface_attn` while
the repository root never enters sys.path (the pack's nodes/ would shadow ComfyUI's nodes.py in
the same pytest process). harness.load_core finds it from its own file, not from the cwd."""
import pytest
import torch

from harness import load_core

load_core()


@pytest.fixture(autouse=True)
def _fixed_torch_seed():
    """Tests drawing from torch's global generator see the same numbers on every run."""
    torch.manual_seed(0)
