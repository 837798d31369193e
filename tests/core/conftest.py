"""Register magicface_attn from its file path, so test modules can `import magicface_attn` while
the repository root never enters sys.path (the pack's nodes/ would shadow ComfyUI's nodes.py in
the same pytest process). Paths derive from this file, not from the cwd or rootdir."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "magicface_attn"


def _register_core_package():
    if "magicface_attn" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "magicface_attn", PACKAGE_DIR / "__init__.py", submodule_search_locations=[str(PACKAGE_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["magicface_attn"] = module
    spec.loader.exec_module(module)


_register_core_package()


@pytest.fixture(autouse=True)
def _fixed_torch_seed():
    """Tests drawing from torch's global generator see the same numbers on every run."""
    torch.manual_seed(0)
