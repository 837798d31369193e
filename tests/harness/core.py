"""Import magicface_attn from its file path, once per process.

The repository root never enters sys.path: the pack's nodes/ would shadow ComfyUI's nodes.py.
The core package imports nothing from ComfyUI, so it loads on its own under its plain name.
"""
import importlib.util
import sys

from .host import REPO_ROOT

CORE_DIR = REPO_ROOT / "magicface_attn"


def load_core():
    """The magicface_attn package, registered in sys.modules under that name."""
    if "magicface_attn" in sys.modules:
        return sys.modules["magicface_attn"]
    spec = importlib.util.spec_from_file_location(
        "magicface_attn", CORE_DIR / "__init__.py", submodule_search_locations=[str(CORE_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["magicface_attn"] = module
    spec.loader.exec_module(module)
    return module
